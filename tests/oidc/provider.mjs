// A real OpenID provider for the console's sign-in tests: oidc-provider on loopback.
//
//   node provider.mjs CONFIG.json
//
// CONFIG: {"port", "client_id", "client_secret", "redirect_uris": [...],
//          "post_logout_redirect_uris": [...], "accounts": {"<login>": {claims...}}}
// Sign-in uses oidc-provider's development login form (any password; the login names an
// account of CONFIG). Consent is granted without a prompt: the console is first-party.
// Prints "ready <issuer>" once it listens.
import { readFileSync } from 'node:fs';

import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const issuer = `http://127.0.0.1:${config.port}`;
const accounts = config.accounts;

const provider = new Provider(issuer, {
  clients: [{
    client_id: config.client_id,
    client_secret: config.client_secret,
    redirect_uris: config.redirect_uris,
    post_logout_redirect_uris: config.post_logout_redirect_uris,
    response_types: ['code'],
    grant_types: ['authorization_code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  claims: {
    openid: ['sub'],
    email: ['email'],
    profile: ['name'],
    groups: ['groups'],
  },
  scopes: ['openid', 'email', 'profile', 'groups'],
  pkce: { required: () => true },
  cookies: { keys: [config.client_secret] },
  features: { devInteractions: { enabled: true } },
  async findAccount(_ctx, id) {
    const claims = accounts[id];
    if (!claims) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...claims }; } };
  },
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid email profile groups');
    await grant.save();
    return grant;
  },
});
// Logins that name no account are refused at the token's claims, not silently accepted.
provider.on('server_error', (_ctx, error) => { console.error(error); });

provider.listen(config.port, '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
