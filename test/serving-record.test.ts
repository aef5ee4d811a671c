// The vLLM versions a converted config.json names (format/quant-config.ts SERVING) are the ones
// the plugin in integrations/vllm was written against (its vllm_sources.py): one record, two
// languages, kept equal here.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { SERVING } from '../src/format/quant-config.js';

const PY = new URL('../integrations/vllm/src/marlin_fp4_vllm/vllm_sources.py', import.meta.url);

function pythonSources(): Record<string, string> {
  const text = readFileSync(PY, 'utf8');
  const body = /VLLM_SOURCES:[^{]*\{([\s\S]*?)\n\}/.exec(text)?.[1];
  if (!body) throw new Error('VLLM_SOURCES not found in vllm_sources.py');
  const out: Record<string, string> = {};
  for (const m of body.matchAll(/"([^"]+)":\s*"([0-9a-f]{40})"/g)) out[m[1]!] = m[2]!;
  return out;
}

describe('serving record', () => {
  it('config.json names the vLLM sources the plugin pins, file by file', () => {
    const py = pythonSources();
    expect(Object.keys(py).length).toBeGreaterThan(0);
    expect(SERVING.vllm_sources).toEqual(py);
  });
});
