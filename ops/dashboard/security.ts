import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { isIP } from 'node:net';

/** Hosts the dashboard may bind without a token: only this machine can reach them. */
export function isLoopbackHost(host: string): boolean {
  const bare = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (bare === 'localhost' || bare === '::1') return true;
  return isIP(bare) === 4 && bare.startsWith('127.');
}

/**
 * Constant-time comparison of two secrets of any length: both are hashed first, so the compared
 * buffers have equal length and neither the content nor the length leaks through timing.
 */
export function secretsEqual(a: string, b: string): boolean {
  const da = createHash('sha256').update(a, 'utf8').digest();
  const db = createHash('sha256').update(b, 'utf8').digest();
  return timingSafeEqual(da, db);
}

/** The session cookie's value: derived from the token, so a restart keeps operators logged in. */
export function sessionValue(token: string): string {
  return createHmac('sha256', token).update('dw-dashboard-session').digest('hex');
}

export function newCsrfToken(): string {
  return randomBytes(32).toString('hex');
}

export function parseCookies(header: string | undefined): Record<string, string> {
  // A Map, so that a cookie named __proto__ or constructor is just a name.
  const cookies = new Map<string, string>();
  for (const part of (header ?? '').split(';')) {
    const eq = part.indexOf('=');
    const name = part.slice(0, Math.max(eq, 0)).trim();
    if (eq < 0 || !name || cookies.has(name)) continue;
    cookies.set(name, part.slice(eq + 1).trim());
  }
  return Object.fromEntries(cookies);
}

export function cookie(name: string, value: string, path: string, secure: boolean, maxAgeS?: number): string {
  return [
    `${name}=${value}`,
    `Path=${path}`,
    'HttpOnly',
    'SameSite=Strict',
    ...(secure ? ['Secure'] : []),
    ...(maxAgeS !== undefined ? [`Max-Age=${maxAgeS}`] : []),
  ].join('; ');
}

/** Pages and scripts come from this server only; no inline script, no framing. */
export const contentSecurityPolicy =
  "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";
