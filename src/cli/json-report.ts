// Every --json report opens with the same three fields: which report it is, the version of its
// schema (schemas/<report>.schema.json, generated from cli/report-schemas.ts) and the tool that
// wrote it. schema_version changes when a field is removed or changes meaning; new fields keep it.
import { VERSION } from '../version.js';

export const SCHEMA_VERSION = 1;
export type ReportKind = 'convert' | 'verify' | 'inspect' | 'upload';

export interface ReportHeader {
  report: ReportKind;
  schema_version: typeof SCHEMA_VERSION;
  tool: { name: 'marlin-fp4'; version: string };
}

export function jsonReport<T extends object>(report: ReportKind, body: T): ReportHeader & T {
  return { report, schema_version: SCHEMA_VERSION, tool: { name: 'marlin-fp4', version: VERSION }, ...body };
}
