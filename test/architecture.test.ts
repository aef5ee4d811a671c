// The house rules of src/: no import cycle between files, and no import from a lower layer to
// a higher one. The layers, lowest first (a file may import its own layer and those below):
//
//   errors.ts, version.ts,  one-line errors and exit codes, the version, where the package is
//   package-root.ts
//   safetensors/            reading and writing safetensors files
//   transform/              the Marlin transforms over the native addon (buffers in, buffers out)
//   format/                 the output checkpoint's contract (names, shapes, records, manifest)
//   checkpoint/             reading a model directory (local or from the Hub)
//   plan/                   what convert will write, checked before anything is written
//   integrity/              sha256 and the manifest check
//   convert/                writing the plan
//   verify/                 proving a converted checkpoint against its source
//   inspect/                what a checkpoint is and what convert would do
//   publish/                uploading a converted checkpoint to the Hub
//   cli/                    the commands
//
// The imports are read from the sources' text (static `import … from`, `export … from` and
// dynamic `import('…')` with a relative path), so this needs no build.
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const SRC = fileURLToPath(new URL('../src/', import.meta.url));

const LAYERS: readonly (readonly string[])[] = [
  ['errors.ts', 'version.ts', 'package-root.ts'],
  ['safetensors'],
  ['transform'],
  ['format'],
  ['checkpoint'],
  ['plan'],
  ['integrity'],
  ['convert'],
  ['verify'],
  ['inspect'],
  ['publish'],
  ['cli'],
];

/** A src-relative path's layer index (its top folder, or the file itself at the top). */
function layerOf(file: string): number {
  const top = file.split('/')[0]!;
  return LAYERS.findIndex((names) => names.includes(top));
}

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : [],
  );
}

const IMPORT = /(?:^|[\s;])(?:import|export)\s[^'"]*?from\s*['"](\.[^'"]+)['"]|import\(\s*['"](\.[^'"]+)['"]\s*\)|^import\s+['"](\.[^'"]+)['"]/gm;

/** The src-relative files a source imports (relative specifiers only: packages and node: are outside). */
export function importsOf(file: string, text: string): string[] {
  const out = new Set<string>();
  for (const m of text.matchAll(IMPORT)) {
    const spec = m[1] ?? m[2] ?? m[3]!;
    out.add(relative(SRC, resolve(dirname(join(SRC, file)), spec.replace(/\.js$/, '.ts'))).split('\\').join('/'));
  }
  return [...out];
}

/** The import graph of src/: file -> files it imports (src-relative, '/'-separated). */
function graph(): Map<string, string[]> {
  const g = new Map<string, string[]>();
  for (const abs of sources(SRC)) {
    const file = relative(SRC, abs).split('\\').join('/');
    g.set(file, importsOf(file, readFileSync(abs, 'utf8')));
  }
  return g;
}

/** Every cycle found by a depth-first search, each as the path that closes it. */
function cycles(g: Map<string, string[]>): string[][] {
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const found: string[][] = [];
  const visit = (f: string) => {
    state.set(f, 'open');
    stack.push(f);
    for (const to of g.get(f) ?? []) {
      if (state.get(to) === 'open') found.push([...stack.slice(stack.indexOf(to)), to]);
      else if (!state.has(to)) visit(to);
    }
    stack.pop();
    state.set(f, 'done');
  };
  for (const f of [...g.keys()].sort()) if (!state.has(f)) visit(f);
  return found;
}

describe('the import graph of src/', () => {
  const g = graph();

  it('reads the imports it is meant to read (the parser itself)', () => {
    const text = [
      "import { a } from '../format/manifest.js';",
      "import type { B } from './b.js';",
      "export { c } from '../safetensors/index.js';",
      "const d = await import('../plan/plan.js');",
      "import { readFile } from 'node:fs/promises';",
      "import {\n  e,\n  f,\n} from '../transform/marlin.js';",
    ].join('\n');
    expect(importsOf('verify/x.ts', text).sort()).toEqual(
      ['format/manifest.ts', 'plan/plan.ts', 'safetensors/index.ts', 'transform/marlin.ts', 'verify/b.ts'].sort(),
    );
    // And on the real tree: verify.ts imports the plan (of either scheme) and its own steps.
    expect(g.get('verify/verify.ts')).toContain('plan/source-plan.ts');
    expect(g.get('verify/verify.ts')).toContain('verify/unit-step.ts');
  });

  it('resolves every relative import to a file that exists', () => {
    const missing = [...g].flatMap(([f, to]) => to.filter((t) => !g.has(t)).map((t) => `${f} -> ${t}`));
    expect(missing).toEqual([]);
  });

  it('places every file in a layer', () => {
    expect([...g.keys()].filter((f) => layerOf(f) < 0)).toEqual([]);
  });

  it('has no import cycle', () => {
    expect(cycles(g).map((c) => c.join(' -> '))).toEqual([]);
  });

  it('imports only from its own layer or below', () => {
    const upward = [...g].flatMap(([f, to]) =>
      to.filter((t) => layerOf(t) > layerOf(f)).map((t) => `${f} (${LAYERS[layerOf(f)]!.join(', ')}) -> ${t} (${LAYERS[layerOf(t)]!.join(', ')})`),
    );
    expect(upward).toEqual([]);
  });

  it('the cycle search finds a cycle where there is one', () => {
    const g2 = new Map([
      ['a.ts', ['b.ts']],
      ['b.ts', ['c.ts']],
      ['c.ts', ['a.ts']],
      ['d.ts', ['a.ts']],
    ]);
    expect(cycles(g2)).toEqual([['a.ts', 'b.ts', 'c.ts', 'a.ts']]);
  });
});
