// The SMART on FHIR JavaScript client library (npm `fhirclient`, Node adapter) completes a
// standalone launch against a running demo gateway (manual interoperability check):
//
//   npm install --prefix tests/clients
//   node tests/clients/smart_app_launch.mjs http://127.0.0.1:8080/ina/fhir
//
// The script is both the app (http://127.0.0.1:9000: /launch and /callback, driven by
// fhirclient: discovery, PKCE, state, code exchange) and the user's browser (it signs in as
// the demo doctor on the demo sign-in page and approves the consent page).
import http from 'node:http';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const smart = require('fhirclient/lib/entry/node');

const iss = process.argv[2];
const fail = (message) => { console.error(message); process.exit(1); };
const memory = new Map();
const storage = {
  async get(key) { return memory.get(key); },
  async set(key, value) { memory.set(key, value); return value; },
  async unset(key) { return memory.delete(key); },
};

let finished;
const done = new Promise((resolve) => { finished = resolve; });
const app = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, 'http://127.0.0.1:9000');
    if (url.pathname === '/launch') {
      await smart(req, res, storage).authorize({
        iss,
        clientId: 'demo-app',
        scope: 'openid fhirUser launch/patient patient/*.rs',
        redirectUri: 'http://127.0.0.1:9000/callback',
        pkceMode: 'required',
      });
      return;
    }
    if (url.pathname === '/callback') {
      const client = await smart(req, res, storage).ready();
      const patient = await client.patient.read();
      const board = await client.request(`Communication?subject=Patient/${client.patient.id}`);
      res.end('ok');
      finished({ patient, board, user: client.getFhirUser(), scope: client.state.tokenResponse.scope });
      return;
    }
    res.writeHead(404).end();
  } catch (error) {
    res.writeHead(500).end(String(error));
    fail(`the app failed: ${error.stack || error}`);
  }
});
await new Promise((resolve) => app.listen(9000, '127.0.0.1', resolve));

// The browser.
const origin = new URL(iss).origin;
const tenant = new URL(iss).pathname.split('/')[1];
let response = await fetch('http://127.0.0.1:9000/launch', { redirect: 'manual' });
const authorize = response.headers.get('location');
if (!authorize || !authorize.startsWith(`${origin}/${tenant}/auth/authorize`)) fail(`fhirclient did not redirect to /authorize: ${authorize}`);
if (!authorize.includes('code_challenge_method=S256')) fail('fhirclient did not use PKCE S256');
response = await fetch(authorize, { redirect: 'manual' });
// The sign-in is bound to this browser: keep the cookie /authorize sets, send the forms' CSRF token.
const cookie = (response.headers.get('set-cookie') || '').split(';')[0] || fail('/authorize set no cookie');
const signIn = await response.text();
const request = /name="request" value="([^"]+)"/.exec(signIn)?.[1] || fail(`no sign-in page: ${signIn}`);
const csrf = /name="csrf" value="([^"]+)"/.exec(signIn)?.[1] || fail(`no CSRF token: ${signIn}`);
const form = (pairs) => ({ method: 'POST', redirect: 'manual', headers: { 'content-type': 'application/x-www-form-urlencoded', cookie }, body: new URLSearchParams(pairs).toString() });
response = await fetch(`${origin}/${tenant}/auth/login`, form([['request', request], ['csrf', csrf], ['user', 'demo-doctor-ina']]));
const consent = await response.text();
const scopes = [...consent.matchAll(/name="scope" value="([^"]+)"/g)].map((m) => ['scope', m[1].replaceAll('&#39;', "'")]);
response = await fetch(`${origin}/${tenant}/auth/consent`, form([['request', request], ['csrf', csrf], ['decision', 'allow'], ['patient', 'demo-yamada-taro'], ...scopes]));
const callback = response.headers.get('location');
if (!callback || !callback.startsWith('http://127.0.0.1:9000/callback')) fail(`no redirect to the app: ${response.status} ${callback}`);
await fetch(callback);
const result = await done;
app.close();
if (result.patient.id !== 'demo-yamada-taro') fail('the wrong patient');
console.log(`fhirclient (SMART JS): standalone launch OK — user ${result.user}, scope "${result.scope}", patient ${result.patient.name[0].text}, ${result.board.entry?.length || 0} board posts`);
