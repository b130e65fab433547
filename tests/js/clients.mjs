// Run by tests/test_js_clients.py: one Azure client for JavaScript, unchanged, against the
// broker. The environment says where the broker is (IDENTITY_ENDPOINT and IDENTITY_HEADER, or
// AZURE_POD_IDENTITY_AUTHORITY_HOST); argv[2] names the case. Prints one JSON line.
import { ManagedIdentityCredential } from "@azure/identity";
import { ManagedIdentityApplication } from "@azure/msal-node";

const RESOURCE = "https://api.partnercenter.microsoft.com";
const CHALLENGE = '{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}';

async function run(name) {
  if (name === "azure-identity") {
    const credential = new ManagedIdentityCredential();
    const tokens = [];
    for (let i = 0; i < 20; i++) tokens.push((await credential.getToken(`${RESOURCE}/.default`)).token);
    return { tokens: [...new Set(tokens)] };
  }
  if (name === "msal-node-cae") {
    // Client capability cp1 (sent as xms_cc), then a claims challenge (msal-node 7.2 sends
    // the refused token's token_sha256_to_refresh only to Service Fabric).
    const app = new ManagedIdentityApplication({ clientCapabilities: ["cp1"] });
    const first = (await app.acquireToken({ resource: RESOURCE })).accessToken;
    const cached = (await app.acquireToken({ resource: RESOURCE })).accessToken;
    const challenged = (await app.acquireToken({ resource: RESOURCE, claims: CHALLENGE })).accessToken;
    return { first, cached, challenged };
  }
  if (name === "msal-node") {
    const app = new ManagedIdentityApplication();
    return { tokens: [(await app.acquireToken({ resource: RESOURCE })).accessToken] };
  }
  throw new Error(`no case ${name}`);
}

try {
  console.log(JSON.stringify(await run(process.argv[2])));
} catch (e) {
  console.log(JSON.stringify({ error: String(e && e.message ? e.message : e).slice(0, 500) }));
  process.exitCode = 1;
}
