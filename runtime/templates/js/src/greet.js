// The work of `{{handler}}`, apart from the host so `node --test` can test it.

/** JSON Schema of the input; the host checks every task input against it
 * before the task is stored, so `run` only sees inputs that fit. */
export const INPUT_SCHEMA = {
  type: 'object',
  properties: {
    name: { type: 'string', description: 'Who to greet.' },
    times: {
      type: 'integer',
      minimum: 1,
      maximum: 100,
      default: 1,
      description: 'How many times (1 to 100, default 1).',
    },
  },
  required: ['name'],
  additionalProperties: false,
};

/**
 * @typedef {object} Input
 * @property {string} name Who to greet.
 * @property {number} [times] How many times (default 1).
 */

/** A failure that retrying cannot fix: the task is dead at once. */
export const fatal = (message) => ({ tag: 'fatal', val: message });
/** A transient failure: the host retries the task with backoff. */
export const retryable = (message) => ({ tag: 'retryable', val: message });

/**
 * Greets `name`, `times` times.
 * @param {Input} input
 * @returns {{greeting: string}}
 */
export function greet(input) {
  if (input.name.trim() === '') {
    // Thrown as a `task-error` value: an Error object would trap instead.
    throw fatal('name is empty; give someone to greet');
  }
  const times = Math.min(Math.max(input.times ?? 1, 1), 100);
  return { greeting: Array(times).fill(`hello, ${input.name}`).join(' ') };
}
