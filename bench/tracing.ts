import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * `--tracing`: a local OTLP/HTTP receiver that accepts and drops every export, and the OTEL_*
 * variables that make the `dw` children start the SDK and export to it. Comparing a run with and
 * without it gives the cost of tracing (spans, context propagation, export) on the same machine.
 */
export async function startNoopOtlpReceiver(): Promise<{ requests(): number; close(): Promise<void> }> {
  let requests = 0;
  const server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      requests++;
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  process.env.OTEL_EXPORTER_OTLP_ENDPOINT = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  process.env.OTEL_EXPORTER_OTLP_PROTOCOL = 'http/json';
  return {
    requests: () => requests,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}
