// A real OpenID provider (panva/oidc-provider) for imapguard's OAuth tests.
//
//   IMAPGUARD_OIDC_ADMIN_SECRET=... node server.mjs --port 0 --https CERT KEY [--exit-on-eof]
//
// Listens on 127.0.0.1 only. The first stdout line is the chosen port, printed
// once the provider answers: the issuer is https://127.0.0.1:PORT. Without
// --https it serves plain HTTP (only for poking at it by hand: imapguard refuses
// an http:// issuer). With --exit-on-eof it exits when its standard input
// closes, so a test run that dies cannot leave it behind (tests/oidc_provider.py).
//
// oidc-provider is pinned to 8.8.1: the 9.x line declares Node.js 22 its minimum,
// 8.x runs on Node 18 (Debian 12's) and 20 (our machines).
//
// Discovery, JWKS and every OpenID endpoint are oidc-provider's own. Beside them,
// test-only endpoints, each needing `Authorization: Bearer $IMAPGUARD_OIDC_ADMIN_SECRET`
// (any local user can reach a loopback port):
//
//   POST /test/token   {sub, email, email_verified?, amr?, acr?, nbf?, ttl?, audience?}
//        -> {access_token, kid}. The token is made by the provider's AccessToken
//        model with a JWT-format resource server (RFC 9068), so it is formatted
//        and signed by oidc-provider with its current key, exactly as its token
//        endpoint would; only the interactive sign-in is skipped. email, amr and
//        acr become claims of the access token (extraTokenClaims).
//   POST /test/rotate  {alg?}  -> {kid, kids}: a new signing key (RS256 unless
//        alg is ES256 or EdDSA) becomes current; the old ones stay published.
//   POST /test/remove  {kid}   -> {kids}: stop publishing a key (not the current one).
//   GET  /test/keys            -> {current, kids}
//   POST /test/client  {client_id, client_secret, redirect_uris} -> {client_id}: register
//        a confidential client for the authorization code flow (the portal's
//        sign-in; client_secret_basic, PKCE).
//   POST /test/login   {sub, email, email_verified?, amr?, acr?} -> {sub}: who signs
//        in at the next interaction. The provider's interaction pages
//        (/interaction/UID) are not interactive here: they finish the login as
//        this account (with these amr/acr, which the ID token carries) and grant
//        the scopes and claims asked for. The ID token carries email and
//        email_verified (conformIdTokenClaims off), as an organisation's IdP does.
//
// oidc-provider builds its keystore once, at construction; rotation therefore
// builds a new Provider with the new key list and routes requests to it. State
// lives in the default in-memory adapter; nothing is persisted.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';

import Provider from 'oidc-provider';

const CLIENT_ID = 'imapguard-tests';
const DEFAULT_AUDIENCE = 'imap';
const MAX_BODY = 64 * 1024;

function usage(message) {
  process.stderr.write(`server.mjs: ${message}\nusage: node server.mjs --port N [--https CERT KEY] [--exit-on-eof]\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const args = { port: undefined, cert: undefined, key: undefined, exitOnEof: false };
  for (let i = 0; i < argv.length; i += 1) {
    switch (argv[i]) {
      case '--port':
        args.port = Number.parseInt(argv[i + 1], 10);
        i += 1;
        break;
      case '--exit-on-eof':
        args.exitOnEof = true;
        break;
      case '--https':
        [args.cert, args.key] = [argv[i + 1], argv[i + 2]];
        i += 2;
        break;
      default:
        usage(`unknown argument ${argv[i]}`);
    }
  }
  if (!Number.isInteger(args.port) || args.port < 0 || args.port > 65535) usage('--port is required');
  if (args.cert !== undefined && (!args.cert || !args.key)) usage('--https needs CERT and KEY');
  return args;
}

const args = parseArgs(process.argv.slice(2));
const adminSecret = process.env.IMAPGUARD_OIDC_ADMIN_SECRET;
if (!adminSecret || adminSecret.length < 16) usage('IMAPGUARD_OIDC_ADMIN_SECRET (16+ chars) must be set');

// -- signing keys ------------------------------------------------------------------

let keyCounter = 0;

function newSigningKey(alg) {
  let pair;
  switch (alg) {
    case 'RS256':
      pair = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
      break;
    case 'ES256':
      pair = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
      break;
    case 'EdDSA':
      pair = crypto.generateKeyPairSync('ed25519');
      break;
    default:
      throw new RangeError(`unsupported alg ${alg}`);
  }
  keyCounter += 1;
  const kid = `k${keyCounter}-${crypto.randomBytes(6).toString('hex')}`;
  return { kid, alg, jwk: { ...pair.privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig' } };
}

const keys = [newSigningKey('RS256')]; // keys[0] is the current signing key
// Clients registered by /test/client, beside the tests' own; accounts and the next
// login set by /test/login.
const extraClients = [];
const accounts = new Map();
let nextLogin;

function resourceServerInfo(audience) {
  return {
    audience,
    scope: 'imap',
    accessTokenFormat: 'jwt',
    accessTokenTTL: 3600,
    jwt: { sign: { alg: keys[0].alg, kid: keys[0].kid } },
  };
}

// -- the provider ------------------------------------------------------------------

let issuer;
let provider;
let providerHandler;

function buildProvider() {
  const p = new Provider(issuer, {
    jwks: { keys: keys.map((k) => k.jwk) },
    clients: [{
      client_id: CLIENT_ID,
      client_secret: crypto.randomBytes(24).toString('hex'),
      grant_types: ['authorization_code'],
      response_types: ['code'],
      redirect_uris: ['https://127.0.0.1/callback'],
    }, ...extraClients],
    conformIdTokenClaims: false,
    pkce: { required: () => true, methods: ['S256'] },
    cookies: { keys: [crypto.randomBytes(24).toString('hex')] },
    claims: {
      // amr and acr in every ID token, as organisations' IdPs put them there.
      openid: ['sub', 'acr', 'amr'], email: ['email', 'email_verified'],
    },
    features: {
      devInteractions: { enabled: false },
      resourceIndicators: {
        enabled: true,
        // The tests' own client gets IMAP access tokens; a client registered by
        // /test/client (a portal signing users in) asks for no resource.
        defaultResource: (_ctx, client) => (client?.clientId === CLIENT_ID ? DEFAULT_AUDIENCE : undefined),
        getResourceServerInfo: (_ctx, resource) => resourceServerInfo(resource),
        useGrantedResource: () => true,
      },
    },
    // The claims chosen by /test/token travel on the token object itself.
    extraTokenClaims: (_ctx, token) => token.testClaims,
    ttl: { AccessToken: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? 3600 },
    findAccount: (_ctx, sub) => ({
      accountId: sub,
      claims: () => ({ sub, ...(accounts.get(sub) ?? {}) }),
    }),
  });
  p.on('server_error', (_ctx, err) => process.stderr.write(`server_error: ${err.stack}\n`));
  return p;
}

function useProvider() {
  provider = buildProvider();
  providerHandler = provider.callback();
}

async function mint(body) {
  const { sub, email } = body;
  if (typeof sub !== 'string' || !sub) throw new RangeError('sub (a non-empty string) is required');
  const ttl = body.ttl ?? 600;
  if (!Number.isInteger(ttl) || ttl <= 0) throw new RangeError('ttl must be a positive integer');
  const testClaims = {};
  if (email !== undefined) testClaims.email = email;
  if (body.email_verified !== undefined) testClaims.email_verified = body.email_verified;
  if (body.amr !== undefined) testClaims.amr = body.amr;
  if (body.acr !== undefined) testClaims.acr = body.acr;
  if (body.nbf !== undefined) testClaims.nbf = body.nbf; // a token not valid yet
  const client = await provider.Client.find(CLIENT_ID);
  const token = new provider.AccessToken({
    accountId: sub,
    client,
    scope: 'imap',
    gty: 'authorization_code',
    expiresIn: ttl,
  });
  token.testClaims = testClaims;
  token.resourceServer = new provider.ResourceServer(
    body.audience ?? DEFAULT_AUDIENCE,
    resourceServerInfo(body.audience ?? DEFAULT_AUDIENCE),
  );
  return { access_token: await token.save(), kid: keys[0].kid };
}

// -- test-only admin endpoints ---------------------------------------------------------

function authorized(req) {
  const given = Buffer.from(req.headers.authorization ?? '');
  const wanted = Buffer.from(`Bearer ${adminSecret}`);
  return given.length === wanted.length && crypto.timingSafeEqual(given, wanted);
}

async function readJson(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY) throw new RangeError('body too large');
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  const value = text ? JSON.parse(text) : {};
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new RangeError('body must be a JSON object');
  return value;
}

function reply(res, status, value) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(value));
}

async function admin(req, res) {
  if (!authorized(req)) return reply(res, 401, { error: 'unauthorized' });
  const route = `${req.method} ${new URL(req.url, issuer).pathname}`;
  try {
    switch (route) {
      case 'GET /test/keys':
        return reply(res, 200, { current: keys[0].kid, kids: keys.map((k) => k.kid) });
      case 'POST /test/token':
        return reply(res, 200, await mint(await readJson(req)));
      case 'POST /test/rotate': {
        const { alg = 'RS256' } = await readJson(req);
        keys.unshift(newSigningKey(alg));
        useProvider();
        return reply(res, 200, { kid: keys[0].kid, kids: keys.map((k) => k.kid) });
      }
      case 'POST /test/client': {
        const { client_id: id, client_secret: secret, redirect_uris: uris } = await readJson(req);
        if (typeof id !== 'string' || !id || typeof secret !== 'string' || secret.length < 16
            || !Array.isArray(uris) || !uris.every((u) => typeof u === 'string')) {
          throw new RangeError('client_id, client_secret (16+ chars) and redirect_uris are required');
        }
        extraClients.push({
          client_id: id,
          client_secret: secret,
          grant_types: ['authorization_code'],
          response_types: ['code'],
          redirect_uris: uris,
          token_endpoint_auth_method: 'client_secret_basic',
        });
        useProvider();
        return reply(res, 200, { client_id: id });
      }
      case 'POST /test/login': {
        const body = await readJson(req);
        if (typeof body.sub !== 'string' || !body.sub) throw new RangeError('sub is required');
        const claims = {};
        if (body.email !== undefined) claims.email = body.email;
        if (body.email_verified !== undefined) claims.email_verified = body.email_verified;
        accounts.set(body.sub, claims);
        nextLogin = { sub: body.sub, amr: body.amr, acr: body.acr };
        return reply(res, 200, { sub: body.sub });
      }
      case 'POST /test/remove': {
        const { kid } = await readJson(req);
        const index = keys.findIndex((k) => k.kid === kid);
        if (index < 0) return reply(res, 404, { error: `no key ${kid}` });
        if (index === 0) return reply(res, 409, { error: 'cannot remove the current signing key' });
        keys.splice(index, 1);
        useProvider();
        return reply(res, 200, { kids: keys.map((k) => k.kid) });
      }
      default:
        return reply(res, 404, { error: `no route ${route}` });
    }
  } catch (err) {
    const status = err instanceof RangeError || err instanceof SyntaxError ? 400 : 500;
    if (status === 500) process.stderr.write(`admin: ${err.stack}\n`);
    return reply(res, status, { error: String(err.message ?? err) });
  }
}

// -- the listener -----------------------------------------------------------------------

// The provider's interaction page, finished at once as the account /test/login set.
async function interaction(req, res) {
  try {
    const details = await provider.interactionDetails(req, res);
    const { prompt, params, session } = details;
    let result;
    if (prompt.name === 'login') {
      if (nextLogin === undefined) return reply(res, 409, { error: 'no /test/login yet' });
      const login = { accountId: nextLogin.sub };
      if (nextLogin.amr !== undefined) login.amr = nextLogin.amr;
      if (nextLogin.acr !== undefined) login.acr = nextLogin.acr;
      result = { login };
    } else if (prompt.name === 'consent') {
      const grant = details.grantId
        ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
      const missing = prompt.details;
      if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
      if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
      for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
      result = { consent: { grantId: await grant.save() } };
    } else {
      return reply(res, 400, { error: `unknown prompt ${prompt.name}` });
    }
    return await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
  } catch (err) {
    process.stderr.write(`interaction: ${err.stack}\n`);
    return reply(res, 500, { error: String(err.message ?? err) });
  }
}

function handle(req, res) {
  if (req.url.startsWith('/test/')) {
    admin(req, res);
    return;
  }
  if (req.method === 'GET' && req.url.startsWith('/interaction/')) {
    interaction(req, res);
    return;
  }
  providerHandler(req, res);
}

const server = args.cert === undefined
  ? http.createServer(handle)
  : https.createServer({ cert: fs.readFileSync(args.cert), key: fs.readFileSync(args.key) }, handle);

server.listen(args.port, '127.0.0.1', () => {
  const { port } = server.address();
  issuer = `${args.cert === undefined ? 'http' : 'https'}://127.0.0.1:${port}`;
  useProvider();
  process.stdout.write(`${port}\n`);
});

// Stop when the parent goes away (its end of our stdin closes) or asks us to.
if (args.exitOnEof) {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.resume();
}
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
