// fhir-kit-client (npm) against a running Renraku (manual interoperability check).
//
//   npm install --prefix tests/clients
//   node tests/clients/fhir_kit_client.mjs http://127.0.0.1:8080/ina/fhir [token] [organization]
import { Client } from 'fhir-kit-client';

const baseUrl = process.argv[2];
const token = process.argv[3] || 'demo-doctor-ina';
const organization = process.argv[4] || 'demo-ina-central-hospital';
const client = new Client({ baseUrl, customHeaders: { Authorization: `Bearer ${token}` } });
const fail = (message) => { console.error(message); process.exit(1); };

const statement = await client.capabilityStatement();
if (statement.fhirVersion !== '4.0.1') fail('unexpected CapabilityStatement');
const system = `urn:renraku:kit-check:${Date.now()}`;
const ids = [];
for (let n = 0; n < 5; n++) {
  const created = await client.create({ resourceType: 'Patient', body: { resourceType: 'Patient', identifier: [{ system, value: `${n}` }], name: [{ family: '佐藤' }], managingOrganization: { reference: `Organization/${organization}` } } });
  ids.push(created.id);
}
const read = await client.read({ resourceType: 'Patient', id: ids[0] });
if (read.name[0].family !== '佐藤') fail('read returned the wrong resource');
read.gender = 'female';
const updated = await client.update({ resourceType: 'Patient', id: ids[0], body: read });
if (updated.meta.versionId !== '2') fail('update did not make version 2');
let page = await client.search({ resourceType: 'Patient', searchParams: { identifier: `${system}|`, _count: 2 } });
const found = [];
while (page) {
  for (const entry of page.entry || []) found.push(entry.resource.id);
  page = await client.nextPage({ bundle: page });
}
if (found.sort().join() !== [...ids].sort().join()) fail(`paging found ${found} instead of ${ids}`);
const history = await client.history({ resourceType: 'Patient', id: ids[0] });
if (history.total !== 2) fail('history should have two versions');
await client.delete({ resourceType: 'Patient', id: ids[1] });
// A transaction and a batch (the client posts them to the base), and a search across types.
const entry = (value) => ({
  fullUrl: `urn:uuid:${crypto.randomUUID()}`,
  resource: { resourceType: 'Patient', identifier: [{ system, value }], name: [{ family: '伊藤' }], managingOrganization: { reference: `Organization/${organization}` } },
  request: { method: 'POST', url: 'Patient', ifNoneExist: `identifier=${system}|${value}` },
});
const transaction = await client.transaction({ body: { resourceType: 'Bundle', type: 'transaction', entry: [entry('t1'), entry('t2')] } });
if (transaction.entry.map((e) => e.response.status.slice(0, 3)).join() !== '201,201') fail(`transaction: ${JSON.stringify(transaction)}`);
const batch = await client.batch({ body: { resourceType: 'Bundle', type: 'batch', entry: [entry('t1'), { request: { method: 'GET', url: 'Patient/does-not-exist' } }] } });
if (batch.entry.map((e) => e.response.status.slice(0, 3)).join() !== '200,404') fail(`batch: ${JSON.stringify(batch)}`);
const across = await client.search({ searchParams: { _type: 'Patient', identifier: `${system}|t1` } });
if ((across.entry || []).length !== 1) fail(`system search: ${JSON.stringify(across)}`);
console.log('fhir-kit-client: capabilities/create/read/update/search/page/history/delete/transaction/batch/system search OK');
