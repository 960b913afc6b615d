// Test-only OAuth 2.0 authorization server for mcpproxy's test suite.
//
// Built on oidc-provider (client authentication, discovery, JWKS, RFC 6749 error bodies) with the
// grants mcpproxy needs added through Provider#registerGrantType(). Never expose it: it has a
// password grant, fixed secrets and unauthenticated control endpoints.
//
// Usage:
//   node server.mjs --port P [--signing-key FILE] [--private-key-jwt-jwks FILE]
//     --port P                   listen on 127.0.0.1:P (0 = any free port); issuer http://127.0.0.1:P
//     --signing-key FILE         private RSA JWK (or JWK Set; first key) to sign tokens with, so a
//                                restarted server keeps its keys; generated when absent
//     --private-key-jwt-jwks F   public JWK Set of the `mcp-proxy-jwt` client (private_key_jwt);
//                                without it that client does not exist
//     --exit-with-stdin          exit when stdin closes (the harness holds it open, so the server
//                                cannot outlive a killed test run)
//   Prints `READY http://127.0.0.1:P` on stdout once listening.
//
// Endpoints: /.well-known/openid-configuration and /.well-known/oauth-authorization-server
// (same document), /jwks, /token. Test control (JSON):
//   GET  /__test/stats        counts by grant type and outcome, last 50 token requests (no secrets)
//   POST /__test/reset        zero the counts, clear every mode, drop the keys rotate-keys added
//                             (the signing key the server started with is kept)
//   POST /__test/mode         merge switches: keycloak, entra, fail, delay_ms, fail_times,
//                             token_ttl, allowed_audiences, allowed_scopes (see DEFAULT_MODE);
//                             faults hit only /token, and spare requests with X-Test-No-Fault: 1
//   POST /__test/rotate-keys  add a signing key and make it current; old keys stay in the JWKS
//
// Clients: llama-stack / llama-stack-secret, llama-stack-public (no secret, password grant only),
// mcp-proxy / proxy-secret, mcp-proxy-jwt (private_key_jwt), my-external-tool /
// my-external-tool-secret, and `proxy:special` / `p@ss:w/rd+&=%` whose id and secret only survive
// client_secret_basic when form-urlencoded first (RFC 6749 §2.3.1). Secret clients may use
// client_secret_basic or client_secret_post. Users: alice/alice, bob/bob, carol/carol.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';

import * as jose from 'jose';
import Provider, { errors } from 'oidc-provider';

const { CustomOIDCProviderError, InvalidClientAuth, InvalidRequest, UnsupportedGrantType } = errors;

const GRANT = {
  password: 'password',
  clientCredentials: 'client_credentials',
  tokenExchange: 'urn:ietf:params:oauth:grant-type:token-exchange',
  jwtBearer: 'urn:ietf:params:oauth:grant-type:jwt-bearer',
};
const TOKEN_TYPE = {
  accessToken: 'urn:ietf:params:oauth:token-type:access_token',
  jwt: 'urn:ietf:params:oauth:token-type:jwt',
  idToken: 'urn:ietf:params:oauth:token-type:id_token',
  idJag: 'urn:ietf:params:oauth:token-type:id-jag',
};
const SUBJECT_TOKEN_TYPES = new Set([TOKEN_TYPE.accessToken, TOKEN_TYPE.jwt, TOKEN_TYPE.idToken]);
const JAG_TYP = 'oauth-id-jag+jwt';
const JAG_TTL = 300;
const DEFAULT_TTL = 3600;
const USER_CLAIMS = ['tenant', 'preferred_username', 'email', 'name', 'groups'];

const USERS = {
  alice: { password: 'alice', tenant: 'acme', email: 'alice@acme.example', name: 'Alice Anders', groups: ['admins', 'engineering'] },
  bob: { password: 'bob', tenant: 'globex', email: 'bob@globex.example', name: 'Bob Brown', groups: ['engineering'] },
  carol: { password: 'carol', tenant: 'acme', email: 'carol@acme.example', name: 'Carol Chen', groups: ['sales'] },
};

// keycloak: requester must be in the subject token's aud, `resource` ignored, no `act`, Keycloak's
//   error codes. entra: no RFC 8693 grant; jwt-bearer needs requested_token_use=on_behalf_of.
// fail: null | "500" | "invalid_json" | "no_expires_in" | "no_issued_token_type" | "slow"
//   (sleep delay_ms first); fail_times: apply the fault to that many token requests, then stop.
// allowed_audiences / allowed_scopes: when a list, anything else is invalid_target / invalid_scope.
const DEFAULT_MODE = {
  keycloak: false,
  entra: false,
  fail: null,
  delay_ms: 0,
  fail_times: null,
  token_ttl: null,
  allowed_audiences: null,
  allowed_scopes: null,
};
const FAULTS = new Set([null, '500', 'invalid_json', 'no_expires_in', 'no_issued_token_type', 'slow']);

// ---------------------------------------------------------------------------------------------
// Command line and keys

function parseArgs(argv) {
  const opts = { port: 0, signingKey: null, proxyJwks: null, exitWithStdin: false };
  for (let i = 0; i < argv.length; i += 1) {
    const value = argv[i + 1];
    switch (argv[i]) {
      case '--port': opts.port = Number(value); i += 1; break;
      case '--signing-key': opts.signingKey = value; i += 1; break;
      case '--private-key-jwt-jwks': opts.proxyJwks = value; i += 1; break;
      case '--exit-with-stdin': opts.exitWithStdin = true; break;
      default: throw new Error(`unknown argument ${argv[i]}`);
    }
  }
  if (!Number.isInteger(opts.port) || opts.port < 0) throw new Error('--port must be an integer');
  return opts;
}

const readJson = (file) => JSON.parse(fs.readFileSync(file, 'utf8'));

// A signing key: { kid, privateKey: KeyObject, privateJwk, publicJwk }.
function makeKey(privateJwk) {
  const jwk = privateJwk ?? crypto.generateKeyPairSync('rsa', { modulusLength: 2048 })
    .privateKey.export({ format: 'jwk' });
  const kid = jwk.kid ?? crypto.randomBytes(8).toString('hex');
  const privateKey = crypto.createPrivateKey({ key: jwk, format: 'jwk' });
  const publicJwk = { ...crypto.createPublicKey(privateKey).export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };
  return { kid, privateKey, privateJwk: { ...jwk, kid, alg: 'RS256', use: 'sig' }, publicJwk };
}

const opts = parseArgs(process.argv.slice(2));
const initialJwk = opts.signingKey ? readJson(opts.signingKey) : null;
const state = {
  keys: [makeKey(initialJwk?.keys ? initialJwk.keys[0] : initialJwk)], // newest (current) first
  mode: { ...DEFAULT_MODE },
  stats: null,
};

function resetStats() {
  state.stats = { total: 0, outcomes: { success: 0, error: 0 }, grant_types: {}, errors: {}, endpoints: {}, requests: [] };
}
resetStats();

// ---------------------------------------------------------------------------------------------
// Token minting and verification

const now = () => Math.floor(Date.now() / 1000);
const ttl = () => state.mode.token_ttl ?? DEFAULT_TTL;
const publicJwks = () => ({ keys: state.keys.map((k) => k.publicJwk) });

// Signs `claims` with the current key; adds iss, iat, exp and a fresh jti. Returns token + lifetime.
async function mint(issuer, claims, { lifetime, typ = 'at+jwt' }) {
  const key = state.keys[0];
  const iat = now();
  const token = await new jose.SignJWT({ ...claims, iss: issuer, iat, exp: iat + lifetime, jti: crypto.randomUUID() })
    .setProtectedHeader({ alg: 'RS256', typ, kid: key.kid })
    .sign(key.privateKey);
  return { token, expiresIn: lifetime };
}

// Verifies a JWT this server issued (any of its keys, past or current); returns header + payload.
async function verifyOwn(issuer, token) {
  const { payload, protectedHeader } = await jose.jwtVerify(token, jose.createLocalJWKSet(publicJwks()), {
    issuer, algorithms: ['RS256'],
  });
  return { payload, header: protectedHeader };
}

// ---------------------------------------------------------------------------------------------
// Errors and parameters

// RFC 6749 error body that keeps its description (oidc-provider hides built-in descriptions).
function oauthError(code, description, status = 400) {
  const err = new CustomOIDCProviderError(code, description);
  if (status !== 400) { err.status = status; err.statusCode = status; }
  return err;
}

const many = (value) => (value === undefined ? [] : [].concat(value).filter((v) => v !== ''));
const audList = (aud) => (aud === undefined ? [] : [].concat(aud));
const audClaim = (list) => (list.length === 1 ? list[0] : list);
const userClaims = (source) => Object.fromEntries(USER_CLAIMS.filter((c) => source[c] !== undefined).map((c) => [c, source[c]]));

function required(params, name) {
  if (!params[name]) throw new InvalidRequest(`missing required parameter '${name}'`);
  return params[name];
}

function requireConfidential(client) {
  if (client.clientAuthMethod === 'none') throw new InvalidClientAuth('public clients cannot use this grant');
}

// RFC 8707: each resource is an absolute URI without a fragment.
function checkResources(resources) {
  for (const r of resources) {
    let url;
    try { url = new URL(r); } catch { url = null; }
    if (!url || url.hash) throw oauthError('invalid_target', `resource must be an absolute URI without a fragment: ${r}`);
  }
}

function checkTargets(targets) {
  const allowed = state.mode.allowed_audiences;
  const bad = allowed ? targets.filter((t) => !allowed.includes(t)) : [];
  if (bad.length) throw oauthError('invalid_target', `the authorization server cannot issue tokens for: ${bad.join(' ')}`);
}

function checkScope(scope) {
  const allowed = state.mode.allowed_scopes;
  const bad = allowed && scope ? scope.split(' ').filter((s) => !allowed.includes(s)) : [];
  if (bad.length) throw oauthError('invalid_scope', `scope not allowed: ${bad.join(' ')}`);
}

// Audience (repeatable, any string) and resource (repeatable, absolute URI) of a request;
// Keycloak ignores `resource`.
function requestedTargets(params) {
  const audiences = many(params.audience);
  const resources = many(params.resource);
  checkResources(resources);
  const targets = state.mode.keycloak ? audiences : [...audiences, ...resources];
  checkTargets(targets);
  return targets;
}

async function verifyGrantToken(issuer, token, what) {
  try {
    return await verifyOwn(issuer, token);
  } catch (e) {
    if (state.mode.keycloak) throw oauthError('invalid_token', 'Invalid token');
    throw oauthError('invalid_grant', `${what} is invalid: ${e.code === 'ERR_JWT_EXPIRED' ? 'token expired' : e.message}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Grants. Each handler runs after oidc-provider authenticated the client (ctx.oidc.client).

// Resource owner password credentials (test-only). Like Keycloak, the token's aud is the requesting
// client unless `audience` is given, plus `X` for every `X-aud` scope (Keycloak audience mapper).
async function passwordGrant(ctx) {
  const { params, client, issuer } = ctx.oidc;
  const username = required(params, 'username');
  const password = required(params, 'password');
  const user = USERS[username];
  if (!user || user.password !== password) throw oauthError('invalid_grant', 'Invalid user credentials');
  let lifetime = ttl();
  if (params.expires_in !== undefined) {
    lifetime = Number(params.expires_in);
    if (!Number.isInteger(lifetime)) throw new InvalidRequest('expires_in must be an integer');
  }
  const scope = params.scope || undefined;
  checkScope(scope);
  const mapped = (scope ?? '').split(' ').filter((s) => s.endsWith('-aud')).map((s) => s.slice(0, -4));
  const aud = [...new Set([...(many(params.audience).length ? many(params.audience) : [client.clientId]), ...mapped])];
  const { token, expiresIn } = await mint(issuer, {
    sub: username, aud: audClaim(aud), client_id: client.clientId, azp: client.clientId, scope,
    preferred_username: username, ...userClaims(user),
  }, { lifetime });
  ctx.body = { access_token: token, token_type: 'Bearer', expires_in: expiresIn, scope };
}

// Client credentials: a token for the client itself, aimed at `audience`/`resource` (default: the
// client's own id).
async function clientCredentialsGrant(ctx) {
  const { params, client, issuer } = ctx.oidc;
  requireConfidential(client);
  const targets = requestedTargets(params);
  const scope = params.scope || undefined;
  checkScope(scope);
  const { token, expiresIn } = await mint(issuer, {
    sub: client.clientId, aud: audClaim(targets.length ? targets : [client.clientId]), client_id: client.clientId, scope,
  }, { lifetime: ttl() });
  ctx.body = { access_token: token, token_type: 'Bearer', expires_in: expiresIn, scope };
}

// RFC 8693 token exchange. The subject token must be one this server issued. The new token keeps
// the subject's identity claims, is aimed at audience+resource (default: the requester) and gets
// `act` when an actor token is given. requested_token_type=id-jag issues an Identity Assertion JWT
// Authorization Grant instead, for the authorization server named in `audience`.
async function tokenExchangeGrant(ctx) {
  const { params, client, issuer } = ctx.oidc;
  const { keycloak, entra } = state.mode;
  if (entra) throw new UnsupportedGrantType();
  requireConfidential(client);
  const subjectToken = required(params, 'subject_token');
  const subjectTokenType = required(params, 'subject_token_type');
  if (!SUBJECT_TOKEN_TYPES.has(subjectTokenType)) throw new InvalidRequest(`unsupported subject_token_type: ${subjectTokenType}`);
  const requested = params.requested_token_type || TOKEN_TYPE.accessToken;
  const supported = keycloak ? [TOKEN_TYPE.accessToken] : [TOKEN_TYPE.accessToken, TOKEN_TYPE.jwt, TOKEN_TYPE.idJag];
  if (!supported.includes(requested)) throw new InvalidRequest(`requested_token_type unsupported: ${requested}`);
  if (!params.actor_token !== !params.actor_token_type) throw new InvalidRequest('actor_token and actor_token_type must be given together');
  if (keycloak && params.actor_token) throw new InvalidRequest("Parameter 'actor_token' is not supported for the standard token exchange");

  const subject = await verifyGrantToken(issuer, subjectToken, 'subject_token');
  if (subject.header.typ === JAG_TYP) throw oauthError('invalid_grant', 'an ID-JAG cannot be a subject token');
  if (keycloak && !audList(subject.payload.aud).includes(client.clientId)) {
    throw oauthError('access_denied', 'Client is not within the token audience', 403);
  }
  let actor = null;
  if (params.actor_token) {
    if (!SUBJECT_TOKEN_TYPES.has(params.actor_token_type)) throw new InvalidRequest(`unsupported actor_token_type: ${params.actor_token_type}`);
    actor = (await verifyGrantToken(issuer, params.actor_token, 'actor_token')).payload;
  }

  const targets = requestedTargets(params);
  if (keycloak) {
    const unknown = targets.filter((a) => !CLIENT_IDS.has(a));
    if (unknown.length) throw oauthError('invalid_client', 'Audience not found');
  }
  const scope = params.scope || subject.payload.scope || undefined;
  checkScope(scope);
  const identity = { sub: subject.payload.sub, ...userClaims(subject.payload) };
  const remaining = subject.payload.exp - now();

  if (requested === TOKEN_TYPE.idJag) {
    const audiences = many(params.audience);
    if (audiences.length !== 1) throw new InvalidRequest('an ID-JAG needs exactly one audience: the issuer of the target authorization server');
    const resources = many(params.resource);
    const { token, expiresIn } = await mint(issuer, {
      ...identity, aud: audiences[0], client_id: client.clientId, scope,
      ...(resources.length ? { resource: audClaim(resources) } : {}),
    }, { lifetime: Math.min(JAG_TTL, remaining), typ: JAG_TYP });
    ctx.body = { access_token: token, issued_token_type: TOKEN_TYPE.idJag, token_type: 'N_A', expires_in: expiresIn, scope };
    return;
  }

  const act = actor && !keycloak
    ? { sub: actor.sub, ...(subject.payload.act ? { act: subject.payload.act } : {}) } : undefined;
  const { token, expiresIn } = await mint(issuer, {
    ...identity, aud: audClaim(targets.length ? targets : [client.clientId]), client_id: client.clientId,
    azp: client.clientId, scope, ...(act ? { act } : {}),
  }, { lifetime: Math.min(ttl(), remaining) });
  ctx.body = { access_token: token, issued_token_type: requested, token_type: 'Bearer', expires_in: expiresIn, scope };
}

// RFC 7523 JWT bearer grant. The assertion is a JWT from this server: an ID-JAG (its aud must be
// this issuer and its client_id the authenticated client) or an access token. The access token is
// aimed at audience/resource, else the JAG's resource claim, else the client.
// With requested_token_use=on_behalf_of it is Entra's on-behalf-of flow instead (see oboGrant).
async function jwtBearerGrant(ctx) {
  const { params, client, issuer } = ctx.oidc;
  const assertion = required(params, 'assertion');
  if (params.requested_token_use === 'on_behalf_of') return oboGrant(ctx, assertion);
  if (state.mode.entra) throw new InvalidRequest('AADSTS50027: requested_token_use must be on_behalf_of');
  const { payload, header } = await verifyGrantToken(issuer, assertion, 'assertion');
  let targets = requestedTargets(params);
  if (header.typ === JAG_TYP) {
    if (!audList(payload.aud).includes(issuer)) throw oauthError('invalid_grant', 'ID-JAG audience is not this authorization server');
    if (payload.client_id !== client.clientId) throw oauthError('invalid_grant', 'ID-JAG was issued to a different client');
    if (!targets.length && payload.resource) targets = audList(payload.resource);
  }
  const scope = params.scope || payload.scope || undefined;
  checkScope(scope);
  const { token, expiresIn } = await mint(issuer, {
    sub: payload.sub, ...userClaims(payload), aud: audClaim(targets.length ? targets : [client.clientId]),
    client_id: client.clientId, scope,
  }, { lifetime: ttl() });
  ctx.body = { access_token: token, token_type: 'Bearer', expires_in: expiresIn, scope };
  return undefined;
}

// Entra ID on-behalf-of: assertion = a token whose aud is the calling client (the middle tier),
// scope = `api://<app>/<perm>` (usually `/.default`). Output: Entra-style token, aud `api://<app>`,
// `scp` permissions, `azp` client; the response has no issued_token_type.
async function oboGrant(ctx, assertion) {
  const { params, client, issuer } = ctx.oidc;
  const scope = required(params, 'scope');
  const parsed = scope.split(' ').map((s) => {
    const i = s.lastIndexOf('/');
    return i > 0 ? { resource: s.slice(0, i), perm: s.slice(i + 1) } : null;
  });
  const resources = new Set(parsed.map((p) => p?.resource));
  if (parsed.includes(null) || resources.size !== 1) {
    throw oauthError('invalid_scope', 'AADSTS70011: scope must name exactly one resource, e.g. api://app/.default');
  }
  checkScope(scope);
  const { payload } = await verifyGrantToken(issuer, assertion, 'assertion');
  if (!audList(payload.aud).some((a) => a === client.clientId || a === `api://${client.clientId}`)) {
    throw oauthError('invalid_grant', 'AADSTS50013: Assertion audience does not match the Client app presenting the assertion.');
  }
  const perms = parsed.map((p) => (p.perm === '.default' ? 'user_impersonation' : p.perm));
  const { token, expiresIn } = await mint(issuer, {
    sub: payload.sub, ...userClaims(payload), aud: [...resources][0], azp: client.clientId,
    scp: perms.join(' '), tid: payload.tenant, ver: '2.0',
  }, { lifetime: ttl(), typ: 'JWT' });
  ctx.body = { token_type: 'Bearer', scope, expires_in: expiresIn, ext_expires_in: expiresIn, access_token: token };
}

// ---------------------------------------------------------------------------------------------
// Provider

const ALL_GRANTS = Object.values(GRANT);
const secretClient = (id, secret) => ({
  client_id: id, client_secret: secret, token_endpoint_auth_method: 'client_secret_basic',
  grant_types: ALL_GRANTS, response_types: [], redirect_uris: [],
});
const CLIENTS = [
  secretClient('llama-stack', 'llama-stack-secret'),
  secretClient('mcp-proxy', 'proxy-secret'),
  secretClient('my-external-tool', 'my-external-tool-secret'),
  secretClient('proxy:special', 'p@ss:w/rd+&=%'),
  {
    client_id: 'llama-stack-public', token_endpoint_auth_method: 'none',
    grant_types: [GRANT.password], response_types: [], redirect_uris: [],
  },
];
if (opts.proxyJwks) {
  CLIENTS.push({
    client_id: 'mcp-proxy-jwt', token_endpoint_auth_method: 'private_key_jwt', jwks: readJson(opts.proxyJwks),
    grant_types: ALL_GRANTS, response_types: [], redirect_uris: [],
  });
}
const CLIENT_IDS = new Set(CLIENTS.map((c) => c.client_id));

function buildProvider(issuer) {
  const provider = new Provider(issuer, {
    clients: CLIENTS,
    jwks: { keys: [state.keys[0].privateJwk] },
    cookies: { keys: [crypto.randomBytes(16).toString('hex')] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: false }, // replaced by clientCredentialsGrant (multi-audience)
      resourceIndicators: { enabled: false }, // resources are handled by the grants themselves
      userinfo: { enabled: false },
      rpInitiatedLogout: { enabled: false },
      pushedAuthorizationRequests: { enabled: false },
      dPoP: { enabled: false },
    },
    responseTypes: ['none'],
  });
  const dupes = ['audience', 'resource'];
  provider.registerGrantType(GRANT.password, passwordGrant, ['username', 'password', 'scope', 'audience', 'expires_in'], dupes);
  provider.registerGrantType(GRANT.clientCredentials, clientCredentialsGrant, ['scope', 'audience', 'resource'], dupes);
  provider.registerGrantType(GRANT.tokenExchange, tokenExchangeGrant, [
    'subject_token', 'subject_token_type', 'actor_token', 'actor_token_type', 'requested_token_type',
    'audience', 'resource', 'scope'], dupes);
  provider.registerGrantType(GRANT.jwtBearer, jwtBearerGrant, ['assertion', 'scope', 'audience', 'resource', 'requested_token_use'], dupes);
  provider.use(testMiddleware);
  return provider;
}

// ---------------------------------------------------------------------------------------------
// Test control, fault injection and request recording (runs in front of oidc-provider's routes)

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

function formToObject(text) {
  const out = {};
  for (const [k, v] of new URLSearchParams(text)) out[k] = k in out ? [].concat(out[k], v) : v;
  return out;
}

function authMethod(ctx, body) {
  if (ctx.get('authorization').toLowerCase().startsWith('basic ')) return 'client_secret_basic';
  if (body.client_assertion) return 'private_key_jwt';
  if (body.client_secret) return 'client_secret_post';
  return 'none';
}

function record(ctx, body) {
  const s = state.stats;
  const grantType = typeof body.grant_type === 'string' ? body.grant_type : null;
  const ok = ctx.status === 200;
  const error = ok ? null : (ctx.body?.error ?? `http_${ctx.status}`);
  s.total += 1;
  s.outcomes[ok ? 'success' : 'error'] += 1;
  s.grant_types[grantType] ??= { success: 0, error: 0 };
  s.grant_types[grantType][ok ? 'success' : 'error'] += 1;
  if (error) s.errors[error] = (s.errors[error] ?? 0) + 1;
  s.requests.push({
    grant_type: grantType,
    client_id: ctx.oidc?.client?.clientId ?? body.client_id ?? null,
    auth_method: authMethod(ctx, body),
    audience: many(body.audience),
    resource: many(body.resource),
    scope: body.scope ?? null,
    requested_token_type: body.requested_token_type ?? null,
    subject_token_type: body.subject_token_type ?? null,
    requested_token_use: body.requested_token_use ?? null,
    had_subject_token: Boolean(body.subject_token),
    had_assertion: Boolean(body.assertion),
    had_actor: Boolean(body.actor_token),
    status: ctx.status,
    error,
  });
  if (s.requests.length > 50) s.requests.shift();
}

function setMode(patch) {
  const unknown = Object.keys(patch).filter((k) => !(k in DEFAULT_MODE));
  if (unknown.length) throw new Error(`unknown mode switches: ${unknown.join(', ')}`);
  const next = { ...state.mode, ...patch };
  if (!FAULTS.has(next.fail)) throw new Error(`unknown fail value: ${next.fail}`);
  if (next.keycloak && next.entra) throw new Error('keycloak and entra modes are exclusive');
  state.mode = next;
}

async function testControl(ctx) {
  const json = (status, body) => { ctx.status = status; ctx.body = body; };
  const route = `${ctx.method} ${ctx.path}`;
  if (route === 'GET /__test/stats') return json(200, state.stats);
  if (route === 'POST /__test/reset') {
    resetStats();
    state.mode = { ...DEFAULT_MODE };
    // keys added by rotate-keys go: they live in memory only, so a restart would drop them anyway
    // and a later test's tokens, signed with one, would stop verifying across its own restart
    state.keys.splice(0, state.keys.length - 1);
    return json(200, { mode: state.mode });
  }
  if (route === 'POST /__test/rotate-keys') {
    state.keys.unshift(makeKey(null));
    return json(200, { kid: state.keys[0].kid, kids: state.keys.map((k) => k.kid) });
  }
  if (route === 'POST /__test/mode') {
    try {
      const text = await readBody(ctx.req);
      setMode(text ? JSON.parse(text) : {});
    } catch (e) {
      return json(400, { error: e.message });
    }
    return json(200, { mode: state.mode });
  }
  return json(404, { error: 'no such test endpoint' });
}

async function testMiddleware(ctx, next) {
  if (ctx.path.startsWith('/__test/')) return testControl(ctx);
  if (ctx.path === '/jwks' || ctx.path.startsWith('/.well-known/')) {
    state.stats.endpoints[ctx.path] = (state.stats.endpoints[ctx.path] ?? 0) + 1;
  }
  // Our own JWKS, so rotated keys appear (oidc-provider's key store is fixed at start-up).
  if (ctx.method === 'GET' && ctx.path === '/jwks') {
    ctx.type = 'application/jwk-set+json; charset=utf-8';
    ctx.body = publicJwks();
    return undefined;
  }
  // RFC 8414 metadata: the same document as OpenID discovery.
  if (ctx.path === '/.well-known/oauth-authorization-server') ctx.path = '/.well-known/openid-configuration';
  if (!(ctx.method === 'POST' && ctx.path === '/token')) return next();

  // Faults spare requests marked `X-Test-No-Fault: 1` (the harness's own token helpers).
  const { mode } = state;
  const fault = ctx.get('x-test-no-fault') === '1' ? null : mode.fail;
  if (fault && mode.fail_times !== null) {
    mode.fail_times -= 1;
    if (mode.fail_times <= 0) { mode.fail = null; mode.fail_times = null; }
  }
  if (fault === 'slow') await sleep(mode.delay_ms);
  if (fault === '500' || fault === 'invalid_json') {
    const body = formToObject(await readBody(ctx.req));
    if (fault === '500') {
      ctx.status = 500;
      ctx.type = 'text/plain';
      ctx.body = 'injected fault: internal server error';
    } else {
      ctx.status = 200;
      ctx.type = 'application/json';
      ctx.body = '{"access_token": "truncated';
    }
    record(ctx, body);
    return undefined;
  }
  await next();
  if (ctx.status === 200 && ctx.body && typeof ctx.body === 'object') {
    if (fault === 'no_expires_in') delete ctx.body.expires_in;
    if (fault === 'no_issued_token_type') delete ctx.body.issued_token_type;
  }
  record(ctx, ctx.oidc?.body ?? {});
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Start: listen first (so --port 0 works), then build the provider for the actual issuer.

let handler = (req, res) => { res.statusCode = 503; res.end(); };
const server = http.createServer((req, res) => handler(req, res));
server.listen(opts.port, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  handler = buildProvider(issuer).callback();
  process.stdout.write(`READY ${issuer}\n`);
});
const shutdown = () => process.exit(0);
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
if (opts.exitWithStdin) {
  process.stdin.on('end', shutdown);
  process.stdin.on('error', shutdown);
  process.stdin.resume();
}
