// Vectors for chat/speakers.py from SillyTavern's own activateNaturalOrder.
//
//   node tests/vectors/st_group_natural.mjs path/to/SillyTavern > tests/vectors/st_group_natural.json
//
// The function's source is cut out of public/scripts/group-chats.js (and extractAllWords
// out of public/scripts/utils.js) and run with a scripted Math.random and an identity
// shuffle, so each vector is deterministic; the test replays the same random numbers.
import { readFileSync } from 'node:fs';
import { execSync } from 'node:child_process';

const root = process.argv[2];
const cut = (file, name) => {
  const text = readFileSync(`${root}/${file}`, 'utf8');
  const start = text.indexOf(`function ${name}(`);
  let depth = 0, i = text.indexOf('{', start);
  for (; i < text.length; i++) {
    if (text[i] === '{') depth++;
    if (text[i] === '}' && --depth === 0) break;
  }
  return text.slice(start, i + 1);
};
const source = cut('public/scripts/group-chats.js', 'activateNaturalOrder');
const words = cut('public/scripts/utils.js', 'extractAllWords');
const onlyUnique = (value, index, array) => array.indexOf(value) === index;
const talkativeness_default = 0.5;
let characters = [];
let rolls = [];
const shuffle = (a) => a;  // identity: the test's random source shuffles nothing either
const run = new Function('characters', 'shuffle', 'onlyUnique', 'talkativeness_default', 'Math',
  `${words}\n${source}\nreturn activateNaturalOrder;`);

const cases = [
  // [members [name, talkativeness]], input, last speaker name or null, allowSelf, isUserInput, rolls
  [[['Ann', 0], ['Bob', 0], ['Cid', 0]], 'Hey Bob, and you Ann?', null, false, true, [0.7, 0.7, 0.7]],
  [[['Ann', 0], ['Bob', 0], ['Cid', 0]], 'ann ANN bob', null, false, true, [0.1, 0.1, 0.1]],
  [[['Ann', 1], ['Bob', 0.5], ['Cid', 0]], 'Nobody named here', null, false, true, [0.4, 0.6, 0.2]],
  [[['Ann', 1], ['Bob', 0.5], ['Cid', 0]], 'Nobody named here', null, false, true, [0.4, 0.5, 0.2]],
  [[['Ann', 0], ['Bob', 0], ['Cid', 0]], 'no names', null, false, true, [0.5, 0.5, 0.5, 0.99]],
  [[['Ann', 0], ['Bob', 0.3], ['Cid', 0]], 'no names', null, false, true, [0.9, 0.9, 0.9, 0.5]],
  [[['Ann', 1], ['Bob', 1], ['Cid', 1]], 'Bob said hi', 'Bob', false, false, [0, 0, 0]],
  [[['Ann', 1], ['Bob', 1], ['Cid', 1]], 'Bob said hi', 'Bob', true, false, [0, 0, 0]],
  [[['Ann', 0], ['Bob', 0], ['Cid', 0]], 'Bob?', 'Bob', false, true, [0.3, 0.3, 0.3]],
  [[['Ann', 0], ['Bob', 0], ['Cid', 0]], 'Bob?', 'Bob', false, false, [0.3, 0.3, 0.3, 0.6]],
  [[['Mary Jane', 0], ['Jane', 0], ['Bo', 0.2]], 'jane, mary!', null, false, true, [0.5, 0.5, 0.1]],
  [[['Ann', '0.5'], ['Bob', 'x'], ['Cid', 0.25]], 'hello', null, false, true, [0.5, 0.51, 0.25]],
];

const out = [];
for (const [members, input, last, allowSelf, isUser, scripted] of cases) {
  characters = members.map(([name, t]) => ({ name, avatar: `${name}.png`, talkativeness: t }));
  rolls = [...scripted];
  const math = Object.create(Math);
  math.random = () => { if (!rolls.length) throw new Error('out of rolls'); return rolls.shift(); };
  const activate = run(characters, shuffle, onlyUnique, talkativeness_default, math);
  const lastMessage = last ? { name: last, is_user: false, mes: input } : { name: 'User', is_user: true, mes: input };
  const ids = activate(characters.map(c => c.avatar), input, lastMessage, allowSelf, isUser);
  out.push({ members, input, last_speaker: last, allow_self_responses: allowSelf,
    user_input: isUser, rolls: scripted, used: scripted.length - rolls.length,
    activated: ids.map(i => characters[i].name) });
}
let commit = process.env.ST_COMMIT || '';
if (!commit) try { commit = execSync(`git -C ${root} rev-parse --short=12 HEAD`).toString().trim(); } catch {}
console.log(JSON.stringify({ source: `SillyTavern (${commit}) public/scripts/group-chats.js ` +
  'activateNaturalOrder, utils.js extractAllWords, run under node', cases: out }, null, 1));
