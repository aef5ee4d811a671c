// marlin_fp4_manifest.json: what convert made, from what, with every output file's size and
// sha256 (integrity/ checks them). Its name, its shape and how it is assembled live here;
// writing it is convert's, reading and checking it integrity's.
import { VERSION } from '../version.js';
import type { ActDtype, LayoutVersion } from '../transform/marlin.js';
import type { FusedGroupRecord, LayerRecord } from './records.js';

export const MANIFEST_FILE = 'marlin_fp4_manifest.json';
export const MANIFEST_VERSION = 1;

export interface ManifestFile {
  name: string;
  bytes: number;
  /** Absent when convert ran with --no-checksums. */
  sha256?: string;
}

/** Where a source from the Hugging Face Hub came from. */
export interface HubProvenance {
  repo: string;
  /** The revision asked for (branch, tag or commit). */
  revision: string;
  /** The commit it pointed at. */
  commit: string;
  /** Source shards whose sha256 was compared with the sha256 the Hub publishes (its LFS oid), and equal. */
  shards_checked_against_hub: number;
}

export interface ManifestSource {
  path: string;
  format: string;
  /** Set when the source was a Hub repo id. */
  hub?: HubProvenance;
  shards: ManifestFile[];
}

export interface Manifest {
  format_version: typeof MANIFEST_VERSION;
  tool: { name: 'marlin-fp4'; version: string };
  source: ManifestSource;
  layout: string;
  activation_dtype: string;
  layers: LayerRecord[];
  /** Absent in manifests written before fused groups were recorded. */
  fused_groups?: FusedGroupRecord[];
  ignored_modules: string[];
  /** Every file of the output but this manifest. */
  files: ManifestFile[];
}

export interface ManifestInput {
  source: ManifestSource;
  layout: LayoutVersion;
  dtype: ActDtype;
  layers: LayerRecord[];
  fusedGroups: FusedGroupRecord[];
  ignored: string[];
  files: ManifestFile[];
}

const byName = (a: ManifestFile, b: ManifestFile) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);

/** The manifest, file lists sorted by name so that equal inputs give equal bytes. */
export function buildManifest(m: ManifestInput): Manifest {
  return {
    format_version: MANIFEST_VERSION,
    tool: { name: 'marlin-fp4', version: VERSION },
    source: { ...m.source, shards: [...m.source.shards].sort(byName) },
    layout: m.layout,
    activation_dtype: m.dtype,
    layers: m.layers,
    fused_groups: m.fusedGroups,
    ignored_modules: m.ignored,
    files: [...m.files].sort(byName),
  };
}

/** Why a parsed manifest is not one this version reads, or undefined when it is. */
export function manifestProblem(m: unknown): string | undefined {
  const o = m as Partial<Manifest> | null;
  if (typeof o !== 'object' || o === null || o.format_version !== MANIFEST_VERSION || !Array.isArray(o.files)) return 'unknown manifest format';
  return undefined;
}
