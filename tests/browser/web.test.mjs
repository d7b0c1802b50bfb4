// Browser test of the tubescribe web page: Debian's headless Chromium, driven by playwright-core
// (no browser download). Starts `tubescribe serve` with a private data dir and its own embedded
// Redis, serves speech over loopback, submits the URL on the page with the keyboard, waits for
// the three stages to reach "done" and the summary to show, then marks the task completed with
// warnings and its summary the LLM fallback (as its manifest would say) and checks the badge,
// the warnings and the summary's fallback note, and saves a screenshot to
// test-output/browser.png. Run by scripts/test.sh; prerequisites from scripts/setup.sh --test.
import { chromium } from "playwright-core";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const BIN = process.env.TUBESCRIBE_BIN || path.join(process.env.CARGO_TARGET_DIR || path.join(ROOT, "target"), "debug/tubescribe");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const OUT = path.join(ROOT, "test-output");
const LIMIT_MS = 150_000;

function need(file, hint) {
  if (!fs.existsSync(file)) throw new Error(`${file} is missing: ${hint}`);
}
need(BIN, "build it with cargo build (scripts/setup.sh --test)");
need(CHROMIUM, "install Debian's chromium (scripts/setup.sh --test)");
need(path.join(ROOT, "models/ggml-tiny.en.bin"), "run scripts/setup.sh --test");
need(path.join(ROOT, ".venv/bin/yt-dlp"), "run scripts/setup.sh --test");

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "ts-browser-"));
const cleanup = [];
const t0 = Date.now();
const log = (...a) => console.error(`[browser ${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...a);
const watchdog = setTimeout(() => { console.error(`browser test: over ${LIMIT_MS / 1000} s`); finish(1); }, LIMIT_MS);

async function finish(code) {
  clearTimeout(watchdog);
  for (const f of cleanup.reverse()) { try { await f(); } catch (e) { console.error("cleanup:", e.message); } }
  fs.rmSync(tmp, { recursive: true, force: true });
  process.exit(code);
}

// Speech: the shared JFK sample when present, else espeak-ng.
function speechWav() {
  const sample = path.join(ROOT, "../shared/samples/jfk.wav");
  if (fs.existsSync(sample)) return sample;
  const out = path.join(tmp, "jfk.wav");
  const r = spawnSync("espeak-ng", ["-v", "en-us", "-s", "150", "-w", out,
    "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."]);
  if (r.status !== 0) throw new Error("espeak-ng is required when ../shared/samples is absent");
  return out;
}

async function serveMedia(file) {
  const server = http.createServer((req, res) => {
    if (req.url !== "/jfk.wav") { res.writeHead(404).end(); return; }
    const body = fs.readFileSync(file);
    res.writeHead(200, { "content-type": "audio/wav", "content-length": body.length });
    res.end(req.method === "HEAD" ? undefined : body);
  });
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  cleanup.push(() => new Promise((ok) => server.close(ok)));
  return server.address().port;
}

async function startServer(mediaPort) {
  const child = spawn(BIN, ["serve", "--listen", "127.0.0.1:0", "--allow-host", `127.0.0.1:${mediaPort}`], {
    env: { ...process.env, TUBESCRIBE_DATA_DIR: path.join(tmp, "data"),
           TUBESCRIBE_MODEL: path.join(ROOT, "models/ggml-tiny.en.bin"),
           TUBESCRIBE_YTDLP: path.join(ROOT, ".venv/bin/yt-dlp"),
           TUBESCRIBE_REDIS_URL: "", TUBESCRIBE_API_TOKEN: "", TUBESCRIBE_LLM_BASE_URL: "" },
    stdio: ["ignore", "ignore", "pipe"],
  });
  cleanup.push(() => new Promise((ok) => {
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

function assert(cond, msg) { if (!cond) throw new Error("assertion failed: " + msg); }

try {
  const mediaPort = await serveMedia(speechWav());
  const base = await startServer(mediaPort);
  log("server at", base);
  // A fresh profile directory (playwright passes it as --user-data-dir).
  const context = await chromium.launchPersistentContext(path.join(tmp, "chromium-profile"), {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1280, height: 900 },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  cleanup.push(() => context.close());
  const page = context.pages()[0] || await context.newPage();
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(e.message));
  await page.goto(base + "/");
  const title = await page.title();
  assert(title === "tubescribe", `page title: ${JSON.stringify(title)} (${page.url()})`);

  // A refused URL shows the server's message.
  await page.getByLabel("Video URL").fill("https://www.youtube.com/playlist?list=PL0123456789");
  await page.getByRole("button", { name: "Transcribe" }).click();
  await page.locator("#message.error").waitFor({ timeout: 10_000 });
  const refused = await page.locator("#message").innerText();
  assert(refused.startsWith("Invalid YouTube URL:"), `refusal message: ${refused}`);
  log("refused:", refused);

  // Submit the loopback media URL with the keyboard (Enter in the field).
  const link = `http://127.0.0.1:${mediaPort}/jfk.wav`;
  await page.getByLabel("Video URL").fill(link);
  await page.getByLabel("Video URL").press("Enter");
  await page.locator("#message.ok").waitFor({ timeout: 10_000 });
  const submitted = await page.locator("#message").innerText();
  assert(submitted.startsWith("Submitted: task url-"), `submit message: ${submitted}`);
  const taskId = submitted.match(/task (\S+?)\.$/)[1];
  log("submitted", taskId);

  // All three stages reach done in the live list (SSE-driven), then the summary shows.
  const item = page.locator(`li[data-task="${taskId}"]`);
  for (const s of ["download", "transcribe", "summarize"]) {
    await item.locator(`.stage[data-stage="${s}"][data-state="completed"]`).waitFor({ timeout: 120_000 });
    log(`${s} done`);
  }
  assert(await item.getAttribute("data-status") === "completed", "task status completed");
  const tldr = page.locator("#tldr");
  await tldr.waitFor({ timeout: 15_000 });
  const summary = await tldr.innerText();
  // Key words only: the espeak fallback (no ../shared/samples) may lose a word such as "not".
  assert(/your country can do for you/i.test(summary), `summary: ${summary}`);
  const stampLink = page.locator("ol.points a.stamp").first();
  assert((await stampLink.getAttribute("href")) === `${link}#t=0`, "key point links to the media at its second");
  assert(await page.locator(".transcript p").count() >= 1, "transcript shown");
  for (const f of ["summary.md", "transcript.srt", "transcript.vtt", "transcript.txt", "transcript.json", "summary.json"]) {
    const a = page.locator(`.downloads a[href="/api/tasks/${taskId}/${f}"]`);
    assert(await a.count() === 1, `download link ${f}`);
  }
  for (const s of ["download", "transcribe", "summarize"]) {
    const v = await item.locator(`.stage[data-stage="${s}"] progress`).getAttribute("value");
    assert(v === "100", `${s} bar at 100, got ${v}`);
  }

  // The same task as the transcribe stage leaves one whose speech partly produced no text:
  // status completed_with_warnings and a warning (with markup that must stay text). After a
  // reload the list and the view show the badge and the sentence; the outputs stay offered.
  const mf = path.join(tmp, "data/tasks", taskId, "manifest.json");
  const warned = JSON.parse(fs.readFileSync(mf, "utf8"));
  const sentence = "5.0 s of speech produced no text (coverage 80 %) <b>00:01</b>";
  // …and whose summary is the extractive fallback because the LLM failed (markup stays text).
  const reason = "LLM server error (503) after 5 attempt(s): <i>overloaded</i>";
  warned.status = "completed_with_warnings";
  warned.warnings = [{ stage: "transcribe", message: sentence },
                     { stage: "summarize", message: `${reason}; the summary is the offline extractive one instead` }];
  warned.stages.summarize.fallback = { reason, at: Date.now() };
  fs.writeFileSync(mf, JSON.stringify(warned));
  await page.reload();
  const witem = page.locator(`li[data-task="${taskId}"][data-status="completed_with_warnings"]`);
  await witem.waitFor({ timeout: 10_000 });
  assert((await witem.locator(".badge").innerText()).includes("completed with warnings"), "warning badge");
  assert(await witem.locator(".warning").first().innerText() === `⚠ transcribe: ${sentence}`, "warning text in the list");
  assert(await witem.locator(".warning b").count() === 0, "warning markup stays text");
  assert((await witem.locator(".warning").nth(1).innerText()).startsWith(`⚠ summarize: ${reason};`), "fallback warning in the list");
  await witem.locator("button.title").click();
  await page.locator("#view .warning").first().waitFor({ timeout: 10_000 });
  assert(await page.locator(`#view .downloads a[href="/api/tasks/${taskId}/transcript.srt"]`).count() === 1,
    "outputs offered for completed_with_warnings");
  await page.locator("#tldr").waitFor({ timeout: 15_000 });
  const fb = page.locator("#summary .fallback");
  await fb.waitFor({ timeout: 10_000 });
  assert((await fb.innerText()).includes(`the LLM failed (${reason})`), `fallback note: ${await fb.innerText()}`);
  assert(await fb.locator("i").count() === 0, "fallback markup stays text");
  assert(pageErrors.length === 0, `page errors: ${pageErrors.join("; ")}`);
  fs.mkdirSync(OUT, { recursive: true });
  await page.screenshot({ path: path.join(OUT, "browser.png"), fullPage: true });
  log("ok; screenshot in test-output/browser.png");
  await finish(0);
} catch (e) {
  console.error("browser test failed:", e);
  await finish(1);
}
