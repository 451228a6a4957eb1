import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  contentSecurityPolicy,
  cookie,
  isLoopbackHost,
  parseCookies,
  secretsEqual,
  sessionValue,
} from '../../ops/dashboard/security.js';

describe('dashboard security helpers', () => {
  it('knows the loopback hosts, and nothing else', () => {
    for (const host of ['127.0.0.1', '127.1.2.3', 'localhost', 'LOCALHOST', '::1', '[::1]']) {
      expect(isLoopbackHost(host), host).toBe(true);
    }
    for (const host of [
      '0.0.0.0',
      '::',
      '10.0.0.1',
      '128.0.0.1',
      'localhost.evil.com',
      '127.0.0.1.nip.io',
      '',
      'evil',
    ]) {
      expect(isLoopbackHost(host), host).toBe(false);
    }
  });

  it('compares secrets of any length without throwing', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary' }), fc.string({ unit: 'binary' }), (a, b) => {
        expect(secretsEqual(a, b)).toBe(a === b);
        expect(secretsEqual(a, a)).toBe(true);
      }),
    );
  });

  it('derives a session value that is not the token', () => {
    const value = sessionValue('s3cret');
    expect(value).toMatch(/^[0-9a-f]{64}$/);
    expect(value).not.toContain('s3cret');
    expect(sessionValue('other')).not.toBe(value);
  });

  it('parses cookies, first one wins, and writes HttpOnly SameSite=Strict ones', () => {
    expect(parseCookies('a=1; dw_csrf=x; dw_csrf=y;junk; =z')).toEqual({ a: '1', dw_csrf: 'x' });
    expect(parseCookies(undefined)).toEqual({});
    expect(Object.getPrototypeOf(parseCookies('__proto__=1; constructor=2'))).toBe(Object.prototype);
    expect(Object.keys(parseCookies('__proto__=1; constructor=2'))).toEqual(['__proto__', 'constructor']);
    expect(cookie('dw_session', 'v', '/dw', true, 60)).toBe(
      'dw_session=v; Path=/dw; HttpOnly; SameSite=Strict; Secure; Max-Age=60',
    );
  });

  it('allows no inline script', () => {
    expect(contentSecurityPolicy).toContain("default-src 'self'");
    expect(contentSecurityPolicy).toContain("script-src 'self'");
    expect(contentSecurityPolicy).not.toContain('unsafe');
  });
});
