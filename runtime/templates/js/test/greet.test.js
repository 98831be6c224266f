import { test } from 'node:test';
import assert from 'node:assert/strict';
import { INPUT_SCHEMA, greet } from '../src/greet.js';

test('greets as often as asked', () => {
  assert.deepEqual(greet({ name: 'Ada', times: 2 }), { greeting: 'hello, Ada hello, Ada' });
});

test('an empty name is fatal', () => {
  assert.throws(() => greet({ name: ' ' }), {
    tag: 'fatal',
    val: 'name is empty; give someone to greet',
  });
});

test('the schema requires a name', () => {
  assert.deepEqual(INPUT_SCHEMA.required, ['name']);
});
