// A real OpenID provider (panva's certified `oidc-provider`) on 127.0.0.1 over HTTPS, for
// tollgate's end-to-end tests. Not for production: fixed client secrets, in-memory storage,
// and unauthenticated /__control endpoints.
//
//   node provider.mjs CERT.pem KEY.pem
//
// Listens on a random loopback port and, once ready, prints exactly one line to stdout:
// `listening on https://127.0.0.1:PORT`, which is also the issuer. Everything else
// (oidc-provider's notices, errors) goes to stderr. See README.md for clients, resources and
// the /__control API.
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import { promisify } from 'node:util';

import Provider, { errors } from 'oidc-provider';

// oidc-provider prints its notices with console.info (stdout); the harness reads stdout for
// the `listening on` line only, so everything but that line goes to stderr.
console.log = console.error;
console.info = console.error;

const [certPath, keyPath] = process.argv.slice(2);
if (!certPath || !keyPath) {
  console.error('usage: node provider.mjs CERT_PEM_PATH KEY_PEM_PATH');
  process.exit(2);
}

// client_id -> secret, groups claim, access token lifetime (seconds).
const CLIENTS = {
  tollgate: { secret: 'tollgate-introspection-secret-0001', groups: [], ttl: 600 },
  alice: { secret: 'alice-client-secret-000001', groups: ['dev', 'ops'], ttl: 600 },
  'bob-es256': { secret: 'bob-client-secret-0000001', groups: ['solo'], ttl: 600 },
  'carol-short': { secret: 'carol-client-secret-00001', groups: ['short'], ttl: 2 },
};

// Resource indicator -> how its access tokens look.
const RESOURCES = {
  'https://kubernetes.test': { accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } },
  'https://es256.kubernetes.test': { accessTokenFormat: 'jwt', jwt: { sign: { alg: 'ES256' } } },
  'https://opaque.test': { accessTokenFormat: 'opaque' },
};

const ttlFor = (client) => CLIENTS[client?.clientId]?.ttl ?? 600;

const generateKeyPair = promisify(crypto.generateKeyPair);

// RFC 7638 thumbprint, so every generated key gets a fresh, unique kid.
function thumbprint(jwk) {
  const members = jwk.kty === 'RSA'
    ? { e: jwk.e, kty: jwk.kty, n: jwk.n }
    : { crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y };
  return crypto.createHash('sha256').update(JSON.stringify(members)).digest('base64url');
}

async function rsaKey() {
  const { privateKey } = await generateKeyPair('rsa', { modulusLength: 2048 });
  return privateKey;
}

async function signingKeys() {
  const [rsa, ec] = await Promise.all([
    rsaKey(),
    generateKeyPair('ec', { namedCurve: 'P-256' }).then(({ privateKey }) => privateKey),
  ]);
  const rsaJwk = rsa.export({ format: 'jwk' });
  const ecJwk = ec.export({ format: 'jwk' });
  return {
    rsa,
    jwks: [
      { ...rsaJwk, kid: `rsa-${thumbprint(rsaJwk).slice(0, 16)}`, alg: 'RS256', use: 'sig' },
      { ...ecJwk, kid: `ec-${thumbprint(ecJwk).slice(0, 16)}`, alg: 'ES256', use: 'sig' },
    ],
  };
}

function makeProvider(issuer, jwks) {
  const provider = new Provider(issuer, {
    clients: Object.entries(CLIENTS).map(([clientId, { secret }]) => ({
      client_id: clientId,
      client_secret: secret,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: 'api',
    })),
    scopes: ['api'],
    jwks: { keys: jwks },
    cookies: { keys: ['tollgate-test-provider-cookie-key'] }, // unused: no interactive flows
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => undefined,
        useGrantedResource: () => false,
        getResourceServerInfo: (ctx, resource, client) => {
          const info = RESOURCES[resource];
          if (!info) throw new errors.InvalidTarget();
          return { scope: 'api', audience: resource, accessTokenTTL: ttlFor(client), ...info };
        },
      },
    },
    ttl: {
      ClientCredentials: (ctx, token, client) => ttlFor(client),
      AccessToken: (ctx, token, client) => ttlFor(client),
    },
    // Client credentials tokens have no account: make `sub` the client id, for the JWT (where
    // oidc-provider already falls back to the client id) and for the introspection answer
    // (where it would otherwise be missing), and add the client's groups to both.
    extraTokenClaims: (ctx, token) => ({
      sub: token.clientId,
      groups: CLIENTS[token.clientId]?.groups ?? [],
    }),
  });
  provider.on('server_error', (ctx, err) => console.error('oidc-provider server_error:', err?.message));
  return { provider, handler: provider.callback() };
}

const state = {
  issuer: undefined,
  delayMs: 0,
  hits: { discovery: 0, jwks: 0, token: 0, introspection: 0 },
  keys: undefined, // { rsa, jwks } of the current provider
  current: undefined, // { provider, handler }
  forger: await rsaKey(), // an RSA key that is never published
};
state.keys = await signingKeys();

const ROUTES = {
  '/.well-known/openid-configuration': 'discovery',
  '/jwks': 'jwks',
  '/token': 'token',
  '/token/introspection': 'introspection',
};

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

function send(res, status, value) {
  const body = JSON.stringify(value);
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(body);
}

function forge(claims, kid, key) {
  const header = { alg: 'RS256', typ: 'JWT' };
  if (kid !== undefined) header.kid = kid;
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const input = `${b64(header)}.${b64(claims)}`;
  const signature = crypto.sign('sha256', Buffer.from(input), key).toString('base64url');
  return `${input}.${signature}`;
}

async function control(req, res, url) {
  if (req.method !== 'POST') return send(res, 405, { error: 'control endpoints take POST' });
  switch (url.pathname) {
    case '/__control/hits':
      return send(res, 200, state.hits);
    case '/__control/delay': {
      const ms = Number(url.searchParams.get('ms') ?? 0);
      if (!Number.isInteger(ms) || ms < 0) return send(res, 400, { error: 'ms must be an integer >= 0' });
      state.delayMs = ms;
      return send(res, 200, { delay: ms });
    }
    case '/__control/rotate': {
      // New RSA and EC keys with new kids; a new provider instance publishes and signs with
      // only them. Its in-memory storage is module-wide, so opaque tokens issued before stay
      // known (but don't rely on it).
      const keys = await signingKeys();
      const current = makeProvider(state.issuer, keys.jwks);
      state.keys = keys;
      state.current = current;
      return send(res, 200, { kids: keys.jwks.map((k) => k.kid) });
    }
    case '/__control/forge': {
      let parsed;
      try {
        parsed = JSON.parse(await readBody(req));
      } catch {
        return send(res, 400, { error: 'body must be JSON' });
      }
      const { claims, kid, key } = parsed ?? {};
      if (typeof claims !== 'object' || claims === null || Array.isArray(claims)) {
        return send(res, 400, { error: 'claims must be an object' });
      }
      if (kid !== undefined && typeof kid !== 'string') return send(res, 400, { error: 'kid must be a string' });
      const signer = { published: state.keys.rsa, unpublished: state.forger }[key];
      if (!signer) return send(res, 400, { error: 'key must be "published" or "unpublished"' });
      return send(res, 200, { token: forge(claims, kid, signer) });
    }
    default:
      return send(res, 404, { error: 'unknown control endpoint' });
  }
}

const server = https.createServer(
  { cert: fs.readFileSync(certPath), key: fs.readFileSync(keyPath) },
  async (req, res) => {
    try {
      const url = new URL(req.url, 'https://127.0.0.1');
      if (url.pathname.startsWith('/__control/')) return await control(req, res, url);
      const route = ROUTES[url.pathname];
      if (route) state.hits[route] += 1;
      if (state.delayMs > 0 && route !== 'token') {
        await new Promise((resolve) => setTimeout(resolve, state.delayMs));
      }
      return state.current.handler(req, res);
    } catch (err) {
      console.error('request failed:', err?.message);
      if (!res.headersSent) send(res, 500, { error: 'internal' });
      else res.destroy();
    }
  },
);

server.listen(0, '127.0.0.1', () => {
  state.issuer = `https://127.0.0.1:${server.address().port}`;
  state.current = makeProvider(state.issuer, state.keys.jwks);
  process.stdout.write(`listening on ${state.issuer}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  });
}
