// What the browser tests share: paths and prerequisites, a private temp dir with cleanup and a
// watchdog, a loopback HTTP fixture, `tubescribe serve` with its own data dir and embedded Redis,
// and Debian's headless Chromium driven by playwright-core (no browser download).
import { chromium } from "playwright-core";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const BIN = process.env.TUBESCRIBE_BIN
  || path.join(process.env.CARGO_TARGET_DIR || path.join(ROOT, "target"), "debug/tubescribe");
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
/// Screenshots go here.
export const OUT = path.join(ROOT, "test-output");

function need(file, hint) {
  if (!fs.existsSync(file)) throw new Error(`${file} is missing: ${hint}`);
}

export function assert(cond, msg) { if (!cond) throw new Error("assertion failed: " + msg); }

/// A test run named `name`: checks the prerequisites, makes a private temp dir, and runs
/// `body(h)`; exits 0 when it returns, 1 when it throws or takes longer than `limitMs`. Cleanups
/// registered with `h.cleanup(f)` run in reverse order either way.
export async function run(name, limitMs, body) {
  need(BIN, "build it with cargo build (scripts/setup.sh --test)");
  need(CHROMIUM, "install Debian's chromium (scripts/setup.sh --test)");
  need(path.join(ROOT, "models/ggml-tiny.en.bin"), "run scripts/setup.sh --test");
  need(path.join(ROOT, ".venv/bin/yt-dlp"), "run scripts/setup.sh --test");
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "ts-browser-"));
  const cleanups = [];
  const t0 = Date.now();
  const h = {
    tmp,
    log: (...a) => console.error(`[${name} ${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...a),
    cleanup: (f) => cleanups.push(f),
  };
  const finish = async (code) => {
    clearTimeout(watchdog);
    for (const f of cleanups.reverse()) { try { await f(); } catch (e) { console.error("cleanup:", e.message); } }
    fs.rmSync(tmp, { recursive: true, force: true });
    process.exit(code);
  };
  const watchdog = setTimeout(() => { console.error(`${name}: over ${limitMs / 1000} s`); finish(1); }, limitMs);
  try {
    await body(h);
    await finish(0);
  } catch (e) {
    console.error(`${name} failed:`, e);
    await finish(1);
  }
}

/// Speech: the shared JFK sample when present, else espeak-ng.
export function speechWav(h) {
  return clipWav(h, "jfk",
    "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country.");
}

/// The shared sample `../shared/samples/<name>.wav` when present, else espeak-ng saying `text`.
export function clipWav(h, name, text) {
  const sample = path.join(ROOT, `../shared/samples/${name}.wav`);
  if (fs.existsSync(sample)) return sample;
  const out = path.join(h.tmp, `${name}.wav`);
  const r = spawnSync("espeak-ng", ["-v", "en-us", "-s", "150", "-w", out, text]);
  if (r.status !== 0) throw new Error("espeak-ng is required when ../shared/samples is absent");
  return out;
}

/// A loopback HTTP server answering with `handler(req, res)`; returns its port. Open responses
/// (a stalled download) are cut when the test ends.
export async function serveHttp(h, handler) {
  const server = http.createServer(handler);
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  h.cleanup(() => new Promise((ok) => { server.closeAllConnections(); server.close(ok); }));
  return server.address().port;
}

/// Sends the WAV `file` (a 404 for anything but GET/HEAD).
export function sendWav(req, res, file) {
  const body = fs.readFileSync(file);
  res.writeHead(200, { "content-type": "audio/wav", "content-length": body.length });
  res.end(req.method === "HEAD" ? undefined : body);
}

/// Starts `tubescribe serve` on a free port with a private data dir, its own embedded Redis, the
/// tiny.en model and media from `127.0.0.1:<mediaPort>` allowed; `env` adds or overrides
/// variables (e.g. `TUBESCRIBE_API_TOKEN`). Returns the base URL.
export async function startServer(h, mediaPort, env = {}) {
  const child = spawn(BIN, ["serve", "--listen", "127.0.0.1:0", "--allow-host", `127.0.0.1:${mediaPort}`], {
    env: { ...process.env, TUBESCRIBE_DATA_DIR: path.join(h.tmp, "data"),
           TUBESCRIBE_MODEL: path.join(ROOT, "models/ggml-tiny.en.bin"),
           TUBESCRIBE_YTDLP: path.join(ROOT, ".venv/bin/yt-dlp"),
           TUBESCRIBE_REDIS_URL: "", TUBESCRIBE_API_TOKEN: "", TUBESCRIBE_LLM_BASE_URL: "", ...env },
    stdio: ["ignore", "ignore", "pipe"],
  });
  h.cleanup(() => new Promise((ok) => {
    if (child.exitCode !== null) return ok();
    child.on("exit", ok); child.kill("SIGTERM");
    setTimeout(() => { child.kill("SIGKILL"); ok(); }, 35_000);
  }));
  return await new Promise((ok, fail) => {
    let buf = "";
    child.stderr.on("data", (d) => {
      buf += d; process.stderr.write(`[tubescribe] ${d}`);
      // The whole address: stderr may arrive in pieces ("http://127.0.0" then "1:8080 …").
      const m = buf.match(/listening on (http:\/\/[0-9.]+:\d+) /);
      if (m) ok(m[1]);
    });
    child.on("exit", (c) => fail(new Error(`tubescribe serve exited ${c}: ${buf}`)));
  });
}

/// Headless Chromium with a fresh profile (playwright passes it as --user-data-dir, so local
/// storage survives reloads); returns its first page and the list its page errors go to.
export async function openBrowser(h, viewport) {
  const context = await chromium.launchPersistentContext(path.join(h.tmp, "chromium-profile"), {
    executablePath: CHROMIUM,
    headless: true,
    viewport,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  h.cleanup(() => context.close());
  const page = context.pages()[0] || await context.newPage();
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(e.message));
  return { page, pageErrors };
}

/// Saves a full-page screenshot as test-output/`name`.
export async function screenshot(page, name) {
  fs.mkdirSync(OUT, { recursive: true });
  await page.screenshot({ path: path.join(OUT, name), fullPage: true });
}
