// A municipality's OpenID Provider for the test suite: the `oidc-provider` package (a
// certified OpenID Connect implementation) with a minimal sign-in step of our own, so that
// tests can choose the account and whether the sign-in used a second factor.
//
//   node tests/op/provider.mjs <port> <redirect_uri>
//
// POST /interaction/<uid> with `login=<account>` (and `mfa=1` for a second factor, and
// `roles=a,b` for the account's `roles` claim) signs in; consent is given automatically.
// Accounts are whatever `login` says (the test decides).
import http from 'node:http';
import Provider from 'oidc-provider';

const port = Number(process.argv[2]);
const redirectUri = process.argv[3];
const issuer = `http://127.0.0.1:${port}`;

// The roles each account signed in with last (the id_token's `roles` claim).
const rolesOf = new Map();

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'renraku',
    client_secret: 'renraku-test-secret',
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  async findAccount(ctx, id) {
    return { accountId: id, async claims() { return { sub: id, roles: rolesOf.get(id) || [] }; } };
  },
  features: { devInteractions: { enabled: false } },
  pkce: { required: () => true },
  cookies: { keys: ['renraku-test-cookie-key'] },
  acrValues: ['urn:renraku:pwd', 'urn:renraku:mfa'],
  // acr and amr go into every id_token (with the openid scope), so the relying party can
  // see whether a second factor was used.
  claims: { openid: ['sub', 'acr', 'amr', 'roles'] },
  // End-user claims (here `roles`) in the id_token itself, as Entra ID and Keycloak can be
  // configured to send them, not only from the userinfo endpoint.
  conformIdTokenClaims: false,
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
});

async function readBody(req) {
  let text = '';
  for await (const chunk of req) text += chunk;
  return new URLSearchParams(text);
}

const server = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, issuer);
    if (url.pathname.startsWith('/interaction/')) {
      const details = await provider.interactionDetails(req, res);
      if (details.prompt.name === 'login') {
        if (req.method !== 'POST') {
          res.writeHead(200, { 'content-type': 'text/html' });
          res.end(`<form method="post"><input name="login"><input name="mfa" value="1"><button>sign in</button></form>`);
          return;
        }
        const form = await readBody(req);
        const mfa = form.get('mfa') === '1';
        rolesOf.set(form.get('login'), (form.get('roles') || '').split(',').filter(Boolean));
        await provider.interactionFinished(req, res, {
          login: {
            accountId: form.get('login'),
            amr: mfa ? ['pwd', 'otp'] : ['pwd'],
            acr: mfa ? 'urn:renraku:mfa' : 'urn:renraku:pwd',
          },
        }, { mergeWithLastSubmission: false });
        return;
      }
      const grant = new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
      const missing = details.prompt.details.missingOIDCScope || [];
      grant.addOIDCScope(['openid', ...missing].join(' '));
      const grantId = await grant.save();
      await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
      return;
    }
    provider.callback()(req, res);
  } catch (error) {
    res.writeHead(500, { 'content-type': 'text/plain' });
    res.end(String(error && error.stack || error));
  }
});

server.listen(port, '127.0.0.1', () => {
  console.log(`listening ${issuer}`);
});
