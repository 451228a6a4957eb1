import { readFileSync } from 'node:fs';
import { Counter, Gauge, Histogram, Summary } from 'prom-client';
import { describe, expect, it } from 'vitest';
import * as metrics from '../../shared/metrics.js';

const { registry } = metrics;

const read = (path: string) => readFileSync(new URL(`../../${path}`, import.meta.url), 'utf8');

/** dw_* metric names a text refers to, histogram series folded into their metric. */
function metricNames(text: string): Set<string> {
  return new Set([...text.matchAll(/\bdw_[a-z_]+/g)].map((m) => m[0].replace(/_(bucket|sum|count)$/, '')));
}

describe('metric names in the docs', () => {
  const registered = new Set(registry.getMetricsAsArray().map((m) => m.name));

  it.each(['docs/grafana-dashboard.json', 'docs/prometheus-alerts.yml'])(
    '%s uses only metrics the processes serve',
    (path) => {
      const names = metricNames(read(path));
      expect(names.size).toBeGreaterThan(5);
      for (const name of names) expect(registered, `${path}: ${name}`).toContain(name);
    },
  );

  it('every metric the code defines is served (registered)', () => {
    const kinds = [Counter, Gauge, Histogram, Summary];
    const defined = Object.values(metrics).filter((value) => kinds.some((kind) => value instanceof kind));
    expect(defined.length).toBeGreaterThan(10);
    for (const metric of defined) {
      const name = (metric as unknown as { name: string }).name;
      expect(registered, name).toContain(name);
    }
  });

  it('the README and docs/contracts.md name every metric', () => {
    for (const path of ['README.md', 'docs/contracts.md']) {
      const named = metricNames(read(path));
      for (const name of registered) expect(named, `${path}: ${name}`).toContain(name);
    }
  });

  it('the dashboard is valid JSON with a panel per metric family', () => {
    const dashboard = JSON.parse(read('docs/grafana-dashboard.json'));
    expect(dashboard.panels.length).toBeGreaterThanOrEqual(10);
  });
});
