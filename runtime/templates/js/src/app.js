// `{{handler}}`: the component's exports, wired to `greet.js`.
// Build: npm run build (componentize-js, without the wasi:http imports the
// lockstep host does not link).

import { log } from 'lockstep:plugin/context@0.1.0';
import { INPUT_SCHEMA, fatal, greet } from './greet.js';

const HANDLER = '{{handler}}';

export const handler = {
  describe() {
    return [
      {
        name: HANDLER,
        description: 'Greets someone by name, `times` times.',
        inputSchema: JSON.stringify(INPUT_SCHEMA),
      },
    ];
  },

  // Throw `{ tag: 'fatal' | 'retryable', val: message }` to return the error
  // case. Anything else thrown (an Error, say) traps: the attempt fails and is
  // retried, and the message is in the task's log lines (`lockstep task ID`).
  run(task) {
    if (task.handler !== HANDLER) {
      throw fatal(`this component has no handler ${JSON.stringify(task.handler)}`);
    }
    log('info', `attempt ${task.attempt}`);
    const output = greet(JSON.parse(task.input));
    return { output: JSON.stringify(output), spawn: [] };
  },
};
