import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { defineApp } from '../../shared/app.js';
import { DefinitionError, SagaDefinitionChangedError } from '../../shared/errors.js';
import {
  defineSaga,
  diffLayouts,
  layoutFingerprint,
  type StageLayout,
  sagaLayout,
} from '../../shared/saga/definition.js';

type Layout = Array<Array<{ name: string; compensate: boolean }>>;

const noop = () => {};

/** Random layouts: 1 to 6 stages of 1 to 3 steps with unique (any) names, each with or without compensation. */
const layouts: fc.Arbitrary<Layout> = fc
  .tuple(
    fc.array(fc.array(fc.boolean(), { minLength: 1, maxLength: 3 }), { minLength: 1, maxLength: 6 }),
    fc.uniqueArray(fc.string({ minLength: 1, maxLength: 6 }), { minLength: 18, maxLength: 18 }),
  )
  .map(([shape, names]) => {
    let next = 0;
    return shape.map((stage) => stage.map((compensate) => ({ name: names[next++]!, compensate })));
  });

type Mutation = 'add' | 'remove' | 'rename' | 'swap-stages' | 'toggle-compensation' | 'split-off';

const mutations: fc.Arbitrary<{ kind: Mutation; i: number; j: number; fresh: string }> = fc.record({
  kind: fc.constantFrom<Mutation>(
    'add',
    'remove',
    'rename',
    'swap-stages',
    'toggle-compensation',
    'split-off',
  ),
  i: fc.nat(),
  j: fc.nat(),
  fresh: fc.string({ minLength: 1, maxLength: 6 }),
});

/**
 * Applies one change to a copy of `layout`; returns it with the names the diff must mention, or
 * undefined when the change does not apply (e.g. removing the only step).
 */
function mutate(
  layout: Layout,
  m: { kind: Mutation; i: number; j: number; fresh: string },
): { changed: Layout; names: string[] } | undefined {
  const changed: Layout = layout.map((stage) => stage.map((s) => ({ ...s })));
  const all = changed.flat();
  const taken = new Set(all.map((s) => s.name));
  const fresh = taken.has(m.fresh) ? undefined : m.fresh;
  const pick = all[m.i % all.length]!;
  const stageOf = (name: string) => changed.findIndex((st) => st.some((s) => s.name === name));
  switch (m.kind) {
    case 'add': {
      if (!fresh) return undefined;
      const at = m.j % (changed.length + 1);
      if (at === changed.length || m.i % 2 === 0) changed.splice(at, 0, [{ name: fresh, compensate: true }]);
      else changed[at]!.push({ name: fresh, compensate: false });
      return { changed, names: [fresh] };
    }
    case 'remove': {
      if (all.length < 2) return undefined;
      const stage = changed[stageOf(pick.name)]!;
      stage.splice(stage.indexOf(pick), 1);
      return { changed: changed.filter((st) => st.length > 0), names: [pick.name] };
    }
    case 'rename': {
      if (!fresh) return undefined;
      const was = pick.name;
      pick.name = fresh;
      return { changed, names: [was, fresh] };
    }
    case 'swap-stages': {
      const a = m.i % changed.length;
      const b = m.j % changed.length;
      if (a === b) return undefined;
      [changed[a], changed[b]] = [changed[b]!, changed[a]!];
      return { changed, names: [...changed[a]!, ...changed[b]!].map((s) => s.name) };
    }
    case 'toggle-compensation':
      pick.compensate = !pick.compensate;
      return { changed, names: [pick.name] };
    case 'split-off': {
      const at = stageOf(pick.name);
      const stage = changed[at]!;
      if (stage.length < 2) return undefined;
      stage.splice(stage.indexOf(pick), 1);
      changed.splice(at + 1, 0, [pick]);
      return { changed, names: [pick.name] };
    }
  }
}

const shuffleGroups = (layout: Layout, seed: number): Layout =>
  layout.map((stage) => {
    const copy = [...stage];
    for (let k = copy.length - 1; k > 0; k--) {
      const r = (seed + k * 7) % (k + 1);
      [copy[k], copy[r]] = [copy[r]!, copy[k]!];
    }
    return copy;
  });

describe('saga stage fingerprint and diff', () => {
  it('the same layout gives the same fingerprint, whatever the order inside a parallel group', () => {
    fc.assert(
      fc.property(layouts, fc.nat(), (layout, seed) => {
        const copy = JSON.parse(JSON.stringify(layout)) as Layout;
        expect(layoutFingerprint(copy)).toBe(layoutFingerprint(layout));
        expect(layoutFingerprint(shuffleGroups(layout, seed))).toBe(layoutFingerprint(layout));
        expect(diffLayouts(layout, shuffleGroups(layout, seed))).toEqual([]);
        // What dw_saga_definitions stores (sagaLayout, through JSON) fingerprints the same.
        expect(layoutFingerprint(JSON.parse(JSON.stringify(sagaLayout(layout))) as StageLayout)).toBe(
          layoutFingerprint(layout),
        );
      }),
    );
  });

  it('any change gives another fingerprint, and the diff names the steps it touched', () => {
    fc.assert(
      fc.property(layouts, mutations, (layout, m) => {
        const mutated = mutate(layout, m);
        fc.pre(mutated !== undefined);
        const { changed, names } = mutated!;
        expect(layoutFingerprint(changed)).not.toBe(layoutFingerprint(layout));
        const diff = diffLayouts(layout, changed);
        expect(diff.length).toBeGreaterThan(0);
        const text = diff.join('; ');
        expect(names.some((n) => text.includes(JSON.stringify(n)))).toBe(true);
        if (m.kind === 'add') expect(text).toContain(`${JSON.stringify(names[0])} added`);
        if (m.kind === 'remove') expect(text).toContain(`${JSON.stringify(names[0])} removed`);
        if (m.kind === 'toggle-compensation') expect(text).toMatch(/gained|lost/);
      }),
      { numRuns: 500 },
    );
  });

  it('says renamed, removed, added, moved and compensation changes in words', () => {
    const v1 = sagaLayout(
      defineSaga('trip').step('reserve', [noop, noop]).step('charge', [noop, noop]).step('notify', noop)
        .stages,
    );
    const renamed = sagaLayout(
      defineSaga('trip').step('reserve', [noop, noop]).step('bill', [noop, noop]).step('notify', noop).stages,
    );
    expect(diffLayouts(v1, renamed)).toEqual(['step "charge" renamed to "bill"']);
    const reworked = sagaLayout(
      defineSaga('trip').step('charge', [noop, noop]).step('reserve', noop).step('audit', noop).stages,
    );
    expect(diffLayouts(v1, reworked)).toEqual([
      'step "notify" renamed to "audit"',
      'step "reserve" moved from stage 1 to 2',
      'step "reserve" lost its compensation',
      'step "charge" moved from stage 2 to 1',
    ]);
  });

  it('a definition without version is version 1; its fingerprint covers the stages, not the code', () => {
    const a = defineSaga('s')
      .step('x', [noop, noop])
      .parallel([
        { name: 'y', run: noop },
        { name: 'z', run: () => 1 as never, compensate: noop },
      ]);
    const b = defineSaga('s', { version: 1, retry: { attempts: 7 } })
      .step('x', [() => 2 as never, noop])
      .parallel([
        { name: 'z', run: noop, compensate: noop, timeoutMs: 5 },
        { name: 'y', run: noop },
      ]);
    expect(a.version).toBe(1);
    expect(a.fingerprint).toMatch(/^[0-9a-f]{64}$/);
    expect(b.fingerprint).toBe(a.fingerprint);
  });

  it('refuses a version that is not a whole number from 1', () => {
    for (const version of [0, -1, 1.5, Number.NaN, 2 ** 31]) {
      expect(() => defineSaga('s', { version })).toThrow(DefinitionError);
    }
  });

  it('the changed-definition error names the saga, the version and the change', () => {
    const error = new SagaDefinitionChangedError('trip', 3, ['step "x" removed'], new Date(0));
    expect(error.code).toBe('DW_SAGA_DEFINITION_CHANGED');
    expect(error.retryable).toBe(false);
    expect(error.message).toContain('saga trip version 3');
    expect(error.message).toContain('step "x" removed');
    expect(error.message).toContain('{ version: 4 }');
  });
});

describe('several versions of a saga in one app', () => {
  const v1 = defineSaga('trip').step('a', noop).step('b', noop);
  const v2 = defineSaga('trip', { version: 2 }).step('a', noop).step('c', noop);

  it('keeps every version and starts new instances on the newest, in any registration order', () => {
    for (const sagas of [
      [v1, v2],
      [v2, v1],
    ]) {
      const app = defineApp({ sagas });
      expect(app.sagas.get('trip')).toBe(v2);
      expect(app.sagaDefinition('trip', 1)).toBe(v1);
      expect(app.sagaDefinition('trip', 2)).toBe(v2);
      expect(app.sagaDefinition('trip', 3)).toBeUndefined();
      expect([...app.sagaVersions.get('trip')!.keys()].sort()).toEqual([1, 2]);
    }
  });

  it('refuses two definitions of one saga with the same version', () => {
    const again = defineSaga('trip').step('a', noop);
    expect(() => defineApp({ sagas: [v1, again] })).toThrow(/registered twice with version 1/);
    expect(() => defineApp({ sagas: [v1, v1] })).toThrow(DefinitionError);
  });
});
