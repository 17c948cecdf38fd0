// The app's whole flow through a client generated from the served OpenAPI document
// (openapi-typescript types + openapi-fetch), against the running system:
// presign -> PUT with the returned headers -> confirm -> poll until ready ->
// try-on with an Idempotency-Key (twice: the same job) -> poll with If-None-Match
// -> download the result; and one error decoded into its typed envelope.
// Input: HF_BASE_URL, HF_TOKEN, HF_IMAGE. Output: one JSON summary line on stdout.
import { createHash, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import createClient from "openapi-fetch";
import type { components, paths } from "./schema.js";

type ErrorEnvelope = components["schemas"]["Error"];
type TryOn = components["schemas"]["TryOn"];

const POLL_MS = 90_000;

function env(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

function fail(step: string, response: Response, detail: unknown): never {
  throw new Error(`${step}: HTTP ${response.status} ${JSON.stringify(detail)}`);
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

// Waits out 429 (Retry-After) like a well-behaved client.
async function patiently<T extends { response: Response }>(call: () => Promise<T>): Promise<T> {
  for (;;) {
    const answer = await call();
    if (answer.response.status !== 429) return answer;
    await sleep(1000 * Number(answer.response.headers.get("Retry-After") ?? "1"));
  }
}

async function main(): Promise<void> {
  const client = createClient<paths>({
    baseUrl: env("HF_BASE_URL"),
    headers: { Authorization: `Bearer ${env("HF_TOKEN")}` },
  });
  const photo = readFileSync(env("HF_IMAGE"));

  const presign = await patiently(() => client.POST("/v1/uploads/presign", {
    body: {
      contentType: "image/jpeg",
      contentLength: photo.byteLength,
      checksum: createHash("sha256").update(photo).digest("base64"),
    },
  }));
  if (!presign.data) fail("presign", presign.response, presign.error);
  const issued = presign.data;

  // The PUT goes to storage, not to our API: exactly the headers the presign returned.
  const put = await fetch(issued.uploadUrl, {
    method: issued.method, headers: issued.headers, body: photo,
  });
  if (put.status !== 200) fail("PUT", put, await put.text());

  const confirm = await patiently(() => client.POST("/v1/uploads/confirm", { body: { key: issued.key } }));
  if (confirm.response.status !== 202) fail("confirm", confirm.response, confirm.error);

  let uploadStatus = "";
  for (const deadline = Date.now() + POLL_MS; Date.now() < deadline; await sleep(500)) {
    const upload = await patiently(() => client.GET("/v1/uploads/{upload_id}", {
      params: { path: { upload_id: issued.uploadId } },
    }));
    if (!upload.data) fail("upload", upload.response, upload.error);
    uploadStatus = upload.data.status;
    if (uploadStatus === "ready" || uploadStatus === "rejected") break;
  }
  if (uploadStatus !== "ready") throw new Error(`upload ended ${uploadStatus}`);

  // A try-on with an Idempotency-Key, twice: the same job.
  const idempotencyKey = `ts-${randomUUID()}`;
  const start = () => patiently(() => client.POST("/v1/try-ons", {
    params: { header: { "Idempotency-Key": idempotencyKey } },
    body: { uploadId: issued.uploadId, hairstyleId: "bob", locale: "en" },
  }));
  const first = await start();
  const again = await start();
  if (!first.data) fail("try-on", first.response, first.error);
  if (!again.data) fail("try-on again", again.response, again.error);

  // Poll with If-None-Match: 304 while nothing changed.
  const jobId = first.data.jobId;
  let job: TryOn | undefined;
  let etag: string | undefined;
  let notModified = 0;
  for (const deadline = Date.now() + POLL_MS; Date.now() < deadline; await sleep(200)) {
    const polled = await patiently(() => client.GET("/v1/try-ons/{job_id}", {
      params: { path: { job_id: jobId }, header: etag ? { "If-None-Match": etag } : {} },
    }));
    if (polled.response.status === 304) {
      notModified += 1;
      continue;
    }
    if (!polled.data) fail("poll", polled.response, polled.error);
    job = polled.data;
    etag = polled.response.headers.get("ETag") ?? undefined;
    if (job.status === "succeeded" || job.status === "failed") break;
  }
  if (!job || job.status !== "succeeded" || !job.resultUrl) {
    throw new Error(`try-on ended ${JSON.stringify(job)}`);
  }
  const unchanged = await client.GET("/v1/try-ons/{job_id}", {
    params: { path: { job_id: jobId }, header: { "If-None-Match": etag ?? "" } },
  });

  const result = await fetch(job.resultUrl);
  const image = new Uint8Array(await result.arrayBuffer());

  // An error, decoded into its typed envelope.
  const missing = await patiently(() => client.GET("/v1/uploads/{upload_id}", {
    params: { path: { upload_id: randomUUID() } },
  }));
  const envelope: ErrorEnvelope | undefined = missing.error;
  if (!envelope) fail("missing upload", missing.response, missing.data);
  const { code, messageKey, message, retriable, correlationId } = envelope.error;

  console.log(JSON.stringify({
    uploadId: issued.uploadId,
    putStatus: put.status,
    uploadStatus,
    jobId,
    repeatedJobId: again.data.jobId,
    jobStatus: job.status,
    notModified,
    unchangedStatus: unchanged.response.status,
    resultStatus: result.status,
    resultContentType: result.headers.get("Content-Type"),
    resultBytes: image.byteLength,
    resultIsJpeg: image[0] === 0xff && image[1] === 0xd8 && image[2] === 0xff,
    error: { status: missing.response.status, code, messageKey, message, retriable, correlationId },
  }));
}

main().catch((error: unknown) => {
  console.error(error instanceof Error ? error.stack : error);
  process.exit(1);
});
