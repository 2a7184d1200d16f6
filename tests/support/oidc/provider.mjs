// panva's oidc-provider on loopback, for keygate's OpenID Connect tests (tests/support/oidc_provider.py).
//
// Usage: node provider.mjs CONFIG.json
// CONFIG: {"port": 0, "clients": [...], "jwks": {"keys": [private JWK...]}, "users_file": PATH,
//          "ttl": {"IdToken": s, "AccessToken": s, "RefreshToken": s},
//          "resources": ["urn:...", ...]}
// Each of `resources` is an API the provider issues JWT access tokens for (RFC 8707 resource
// indicators, RFC 9068 JWT profile), also to clients allowed `client_credentials` (workloads).
// Prints one line `{"ready": true, "issuer": "http://127.0.0.1:PORT"}` once it listens.
// Users are re-read from users_file on every account lookup, so a test can narrow a user's
// groups at the provider while sessions are open: {"alice": {"name": "Alice", "groups": [...]}}.
// Sign-in uses the package's devInteractions (any password; the login names the account).
import { readFileSync } from 'node:fs';
import http from 'node:http';

import Provider, { errors } from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const HOST = '127.0.0.1';
const RESOURCES = config.resources || [];
const RESOURCE_SCOPE = 'api';

function users() {
  return JSON.parse(readFileSync(config.users_file, 'utf8'));
}

async function findAccount(ctx, id) {
  const user = users()[id];
  if (!user) return undefined;
  return {
    accountId: id,
    async claims() {
      const current = users()[id] || { groups: [] };
      return {
        sub: id,
        name: current.name || id,
        preferred_username: id,
        email: `${id}@example.test`,
        groups: current.groups || [],
      };
    },
  };
}

const server = http.createServer();
server.listen(config.port || 0, HOST, () => {
  const { port } = server.address();
  const issuer = `http://${HOST}:${port}`;
  const ttl = config.ttl || {};
  const provider = new Provider(issuer, {
    clients: config.clients,
    jwks: config.jwks,
    findAccount,
    claims: {
      openid: ['sub'],
      profile: ['name', 'preferred_username'],
      email: ['email'],
      groups: ['groups'],
    },
    scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
    // Put the scopes' claims in the ID token itself (keygate reads grants from it).
    conformIdTokenClaims: false,
    // A refresh token for every client allowed the grant, so sessions can re-read groups.
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    // A user's access tokens carry the groups too (as a Keycloak group mapper would).
    async extraTokenClaims(_ctx, token) {
      if (!token.accountId) return undefined;
      const user = users()[token.accountId];
      return user ? { groups: user.groups || [] } : undefined;
    },
    features: {
      devInteractions: { enabled: true },
      rpInitiatedLogout: { enabled: true },
      clientCredentials: { enabled: RESOURCES.length > 0 },
      resourceIndicators: {
        enabled: true,
        async getResourceServerInfo(_ctx, resource) {
          if (!RESOURCES.includes(resource)) throw new errors.InvalidTarget();
          return {
            scope: RESOURCE_SCOPE,
            audience: resource,
            accessTokenTTL: ttl.AccessToken || 3600,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
    cookies: { keys: ['keygate-test-provider-cookie-key'] },
    ttl: {
      IdToken: ttl.IdToken || 3600,
      AccessToken: ttl.AccessToken || 3600,
      RefreshToken: ttl.RefreshToken || 86400,
      Grant: 86400,
      Session: 86400,
      Interaction: 600,
      AuthorizationCode: 60,
    },
  });
  // Quiet by default; errors the provider answers with are logged for the test's log file.
  provider.on('server_error', (_ctx, error) => console.error('server_error', error));
  provider.on('grant.error', (_ctx, error) => console.error('grant.error', error.message));
  server.on('request', provider.callback());
  console.log(JSON.stringify({ ready: true, issuer }));
});

function stop() {
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
