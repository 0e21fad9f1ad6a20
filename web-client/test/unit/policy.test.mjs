// The reconnection rules of the issue, checked on the app's own policy module (compiled from
// TypeScript with the esbuild that Vite uses).

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { transformSync } from 'esbuild';

const source = readFileSync(new URL('../../src/policy.ts', import.meta.url), 'utf8');
const { code } = transformSync(source, { loader: 'ts', format: 'esm' });
const { backoffDelay, judgeClose } = await import(`data:text/javascript,${encodeURIComponent(code)}`);

test('the app reconnects after 1001, 1006, 4420, 4503, 4504 and 1013', () => {
  for (const code of [1001, 1006, 4420, 4503, 4504, 1013]) {
    assert.deepEqual(judgeClose(code, ''), { reconnect: true, message: null, signInAgain: false }, `code ${code}`);
  }
});

test('the app stops after 1008, 4403, 4400, 4409 and 4429 and says why in plain words', () => {
  for (const code of [1008, 4403, 4400, 4409, 4429]) {
    const verdict = judgeClose(code, code === 4403 ? 'Forbidden' : '');
    assert.equal(verdict.reconnect, false, `code ${code}`);
    assert.match(verdict.message, /\w+ \w+ \w+/, `code ${code}`);
  }
  assert.equal(judgeClose(4403, 'Forbidden').signInAgain, true);
  assert.match(judgeClose(4403, 'Token expired').message, /expired/);
  assert.match(judgeClose(4403, 'Revoked').message, /revoked/);
  assert.match(judgeClose(1008, '').message, /newer connection/);
});

test('backoff starts at 1 s, doubles, never exceeds 10 s, and is randomized by 0.5', () => {
  const low = () => 0;
  const high = () => 1;
  const middle = () => 0.5;
  assert.deepEqual([0, 1, 2, 3, 4, 5, 30].map((n) => backoffDelay(n, middle)), [1000, 2000, 4000, 8000, 10000, 10000, 10000]);
  assert.equal(backoffDelay(0, low), 500);
  assert.equal(backoffDelay(0, high), 1500);
  assert.equal(backoffDelay(2, low), 2000);
  assert.equal(backoffDelay(4, high), 10000, 'capped after the jitter too');
  for (let i = 0; i < 200; i++) {
    const d = backoffDelay(Math.floor(i / 20));
    assert.ok(d >= 500 && d <= 10000, `${d}`);
  }
});
