// The JWT the tab signs in with. It is only decoded here to show who the user is and when the
// token expires; the server verifies it.

export const TOKEN_KEY = 'palisade.token';

export interface Claims {
  sub?: string;
  exp?: number;
  [claim: string]: unknown;
}

export function decode(token: string): Claims | null {
  const parts = token.trim().split('.');
  if (parts.length !== 3) return null;
  try {
    const json = atob(parts[1].replace(/-/g, '+').replace(/_/g, '/'));
    const claims: unknown = JSON.parse(json);
    return typeof claims === 'object' && claims !== null ? (claims as Claims) : null;
  } catch {
    return null;
  }
}

export function expired(claims: Claims, now = Date.now()): boolean {
  return typeof claims.exp === 'number' && claims.exp * 1000 <= now;
}

export function stored(): string | null {
  return localStorage.getItem(TOKEN_KEY);
}

export function store(token: string): void {
  localStorage.setItem(TOKEN_KEY, token);
}

/** Set while the tab is signed in with the development session cookie (itself HttpOnly). */
export const COOKIE_KEY = 'palisade.cookie';

export function forget(): void {
  localStorage.removeItem(TOKEN_KEY);
  localStorage.removeItem(COOKIE_KEY);
}
