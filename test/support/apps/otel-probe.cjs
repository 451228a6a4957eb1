// Preloaded (--require) into a `dw` child: on exit, says how many modules of an OpenTelemetry SDK
// package were loaded. ES imports of these CommonJS packages land in the same module cache.
process.on('exit', () => {
  const loaded = Object.keys(require('node:module')._cache).filter((k) => k.includes('@opentelemetry/sdk'));
  process.stderr.write(`otel-sdk-modules-loaded=${loaded.length}\n`);
});
