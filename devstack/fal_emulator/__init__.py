"""An offline fal.ai queue emulator that the unmodified `fal_client.SyncClient` talks to.

What it serves (HTTPS on 127.0.0.1, one port, certificate from a local trustme CA):

- the queue API for any app id (`fal-ai/nano-banana/edit`, ...): `POST /{app}[?fal_webhook=URL]`,
  `GET /{owner}/{alias}/requests/{id}/status`, `GET /{owner}/{alias}/requests/{id}`,
  `PUT /{owner}/{alias}/requests/{id}/cancel` (`Authorization: Key <non-empty>` required);
- a media host, `GET /media/{file}`, serving the result images (no auth, like fal's CDN);
- `GET /.well-known/jwks.json`: the Ed25519 key the webhooks are signed with;
- control endpoints: `GET|POST /_emulator/config`, `GET /_emulator/stats[?requests=0]`,
  `POST /_emulator/reset` (body `{"config": true}` also restores the start-up knobs),
  `GET /_emulator/health`.

The emulated model really works: when a job runs it downloads `image_urls[0]` with httpx (so
an expired or tampered presigned URL fails as on fal, with a 422 `file_download_error`),
decodes it with Pillow and returns a visibly edited copy (the top third - the hair - tinted
with a colour derived from the prompt, plus a small label) on the media host.

Configuring a client (verified by tests/integration/test_fal_emulator.py with fal-client 1.0.3
and httpx 0.28):

- trust: `SSL_CERT_FILE=<state>/ca.pem` (only the emulator's CA) or, for processes that also
  talk to real HTTPS services, `SSL_CERT_FILE=<state>/ca-bundle.pem` (certifi's roots plus
  the emulator's CA). httpx reads the variable when an `httpx.Client` is *built*;
  `SyncClient` builds its client lazily on first use (a cached property), so set the
  variable before the first request made through that SyncClient instance.
- address, either of:
  * in-process: `fal_client.client.QUEUE_URL_FORMAT = emulator.queue_url_format`
    (`https://127.0.0.1:PORT/`); a module global read at call time by submit/status/
    result/cancel - works with the real client, no restart needed;
  * for a fresh process: `FAL_QUEUE_RUN_HOST=127.0.0.1:PORT` in its environment (fal-client
    reads it once, at import). `FalEmulator.client_env()` returns these variables.
- any non-empty key: `SyncClient(key="test")` or `FAL_KEY=test`.

Note that `SyncClient.result()` polls status until COMPLETED before fetching the result, so
it blocks forever on a job that never completes (see the `never_complete` fault).

Knobs (constructor keywords, CLI flags, `configure(**knobs)`, `POST /_emulator/config`):

- `latency_seconds` (time IN_PROGRESS), `queue_seconds` (minimum time IN_QUEUE),
  `max_concurrency` (jobs IN_PROGRESS at once; 0 = unlimited, others wait IN_QUEUE with a
  real `queue_position`), `honour_cancel` (the emulated app stops when cancelled in progress),
  `download_timeout`, `user_id` (sent in `X-Fal-Webhook-User-Id`);
- `submit_faults`: list, one taken per submit (POST), see SUBMIT_FAULTS;
- `job_faults`: list, one taken per accepted submit and applied when that job completes,
  see JOB_FAULTS (taken at submit so that "the next job" is well defined);
- `webhook_mode`: "normal" | "duplicate" | "late" | "none" | "early" ("early": the job is
  processed inside the submit call and its webhook delivered before the submit response is
  sent, i.e. before the caller knows the request_id); `webhook_late_seconds`;
  `webhook_retry_delays` (a non-2xx or failed delivery is retried after each delay in turn);
  `webhook_on_cancel` (deliver an ERROR webhook for cancelled requests; default off - fal's
  behaviour there is unconfirmed);
- `submit_delay_seconds` (hold a submit's response this long after the job was enqueued: fal
  has accepted it, the caller does not know yet) and `media_delay_seconds` (hold media
  downloads): windows for the fault suite to kill a worker in; `webhook_duplicate_seconds`
  (the delay of "duplicate" mode's second delivery, default 0.2 s).

Per request, `stats()` reports the webhook URL and start timeout it was submitted with, and
the retention asked for. Like fal, the emulator honours `X-Fal-Object-Lifecycle-Preference`
(`{"expiration_duration_seconds": N}`: the request's media files are deleted N seconds after
it completed, then 404) and `X-Fal-Store-IO: 0` (the payload is dropped once it completed);
a result answers 404 `result_retention_seconds` (default 3600) after completion.

Choices where fal's exact behaviour is not documented (the emulator's, not fal's): a
cancelled request reports COMPLETED with `error_type` "request_cancelled" and its result is
400; a request whose `X-Fal-Request-Timeout` (start_timeout) passes while IN_QUEUE completes
with `request_timeout` (result 504 with `X-Fal-Request-Timeout-Type: user`); status/result
URLs that include the endpoint path (`.../nano-banana/edit/requests/...`) are 404; model
errors echo the offending input in `detail[].input` as pydantic-style errors do - a
presigned URL included, so never log them verbatim.

Jobs move through a single scheduler thread (a heap of timers) and a small worker pool, so
thousands of requests can be in flight without a thread each.

The modules: `config` (the knobs), `jobs` (a request's record and outcome), `scheduler`,
`core` (queue and job lifecycle), `model` and `media` (the emulated edit, the media host),
`webhooks` (Ed25519 signing and delivery), `tls` (the local CA), `server` (the HTTP routes),
`emulator` (FalEmulator, in this process), `process` (FalEmulatorProcess, a subprocess)
and `cli` (`python -m devstack.fal_emulator`).
"""


from devstack.fal_emulator.cli import main
from devstack.fal_emulator.config import (
    DEFAULT_USER_ID,
    JOB_FAULTS,
    SUBMIT_FAULTS,
    WEBHOOK_MODES,
    EmulatorConfig,
)
from devstack.fal_emulator.emulator import FalEmulator
from devstack.fal_emulator.jobs import COMPLETED, IN_PROGRESS, IN_QUEUE
from devstack.fal_emulator.media import edit_image
from devstack.fal_emulator.model import CONTENT_POLICY_MSG
from devstack.fal_emulator.process import (
    INFO_FILE,
    REPO_ROOT,
    START_TIMEOUT,
    FalEmulatorProcess,
    start_emulator_process,
)
from devstack.fal_emulator.webhooks import load_signing_key

__all__ = [
    "COMPLETED",
    "CONTENT_POLICY_MSG",
    "DEFAULT_USER_ID",
    "INFO_FILE",
    "IN_PROGRESS",
    "IN_QUEUE",
    "JOB_FAULTS",
    "REPO_ROOT",
    "START_TIMEOUT",
    "SUBMIT_FAULTS",
    "WEBHOOK_MODES",
    "EmulatorConfig",
    "FalEmulator",
    "FalEmulatorProcess",
    "edit_image",
    "load_signing_key",
    "main",
    "start_emulator_process",
]
