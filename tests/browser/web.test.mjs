// Browser test of the tubescribe web page: Debian's headless Chromium, driven by playwright-core
// (no browser download). Starts `tubescribe serve` with a private data dir and its own embedded
// Redis, serves speech over loopback, submits the URL on the page with the keyboard, waits for
// the three stages to reach "done" and the summary to show (before that: a playlist expanded into
// a batch, listed by a stand-in yt-dlp, shown as one group; the callback URL field is sent), then marks the task completed with
// warnings and its summary the LLM fallback (as its manifest would say) and checks the badge,
// the warnings and the summary's fallback note, and saves a screenshot to
// test-output/browser.png; then the audio link and Delete (confirm dismissed, then accepted). Run by scripts/test.sh; prerequisites from scripts/setup.sh --test.
import fs from "node:fs";
import path from "node:path";
import { assert, run, screenshot, sendWav, serveHttp, speechWav, startServer, openBrowser } from "./harness.mjs";

await run("browser", 150_000, async (h) => {
  const { log, tmp } = h;
  const wav = speechWav(h);
  const mediaPort = await serveHttp(h, (req, res) => {
    if (req.url === "/jfk.wav") sendWav(req, res, wav); else res.writeHead(404).end();
  });
  // yt-dlp lists the playlist (`--flat-playlist -J`, yt-dlp's own shape); its videos fail.
  const ytdlp = path.join(tmp, "fake-yt-dlp");
  const entries = ["BatchVid001", "BatchVid002"].map((id, i) => ({ _type: "url", ie_key: "Youtube", id,
    url: `https://www.youtube.com/watch?v=${id}`, title: `Talk ${i}` }));
  fs.writeFileSync(ytdlp, `#!/usr/bin/env python3
import sys
if "--flat-playlist" in sys.argv:
    print(${JSON.stringify(JSON.stringify({ _type: "playlist", id: "PL0123456789", title: "Two talks", entries }))})
    sys.exit(0)
sys.stderr.write("ERROR: [youtube] " + sys.argv[-1][-11:] + ": Video unavailable\\n")
sys.exit(1)
`, { mode: 0o755 });
  const base = await startServer(h, mediaPort, { TUBESCRIBE_YTDLP: ytdlp });
  log("server at", base);
  const { page, pageErrors } = await openBrowser(h, { width: 1280, height: 900 });
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

  // "Expand playlist or channel": the callback URL goes with the form (refused here: the server
  // has no webhook secret), then the playlist becomes a batch shown as one group of its videos.
  await page.getByLabel("Expand playlist or channel").check();
  await page.getByLabel("Callback URL (optional)").fill(`http://127.0.0.1:${mediaPort}/hook`);
  await page.getByRole("button", { name: "Transcribe" }).click();
  await page.locator("#message.error").filter({ hasText: "webhook secret" }).waitFor({ timeout: 10_000 });
  await page.getByLabel("Callback URL (optional)").fill("");
  await page.getByRole("button", { name: "Transcribe" }).click();
  await page.locator("#message.ok").waitFor({ timeout: 30_000 });
  const expanded = await page.locator("#message").innerText();
  assert(/^Submitted playlist Two talks: 2 videos \(batch-[0-9a-f]{16}\)\.$/.test(expanded), `expand message: ${expanded}`);
  const group = page.locator("li.batch");
  assert(await group.locator(".batch-head").innerText() === "playlist Two talks: 2 videos", "batch heading");
  for (const v of ["BatchVid001", "BatchVid002"])
    await group.locator(`li.task[data-task="yt-${v}"]`).waitFor({ timeout: 10_000 });
  await page.getByLabel("Expand playlist or channel").uncheck();
  log("batch shown:", expanded);

  // Submit the loopback media URL with the keyboard (Enter in the field).
  const link = `http://127.0.0.1:${mediaPort}/jfk.wav`;
  await page.getByLabel("Video URL").fill(link);
  await page.getByLabel("Video URL").press("Enter");
  // The batch's message is already shown as ok: wait for this submission's own.
  await page.locator("#message.ok").filter({ hasText: /^Submitted: task / }).waitFor({ timeout: 10_000 });
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
  // The downloaded audio is offered while it exists.
  const audio = page.locator(`#view .downloads a[href="/api/tasks/${taskId}/media"]`);
  assert(await audio.count() === 1 && (await audio.innerText()) === "audio (media.wav)", "audio link");
  assert(pageErrors.length === 0, `page errors: ${pageErrors.join("; ")}`);
  await screenshot(page, "browser.png");

  // Delete asks first: dismissed, nothing happens; accepted, the task is gone everywhere.
  const asked = [];
  page.once("dialog", (d) => { asked.push(d.message()); d.dismiss(); });
  await page.locator("#view button.danger").click();
  assert(await item.count() === 1, "a dismissed confirm keeps the task");
  page.once("dialog", (d) => { asked.push(d.message()); d.accept(); });
  await page.locator("#view button.danger").click();
  await item.waitFor({ state: "detached", timeout: 10_000 });
  assert(asked.length === 2 && asked[1].startsWith(`Delete task ${taskId} with all its files`), `confirm: ${asked}`);
  assert((await page.locator("#message").innerText()) === `Deleted ${taskId}.`, "delete message");
  const gone = await fetch(`${base}/api/tasks/${taskId}`);
  assert(gone.status === 404, `deleted task answers ${gone.status}`);
  assert(!fs.existsSync(path.join(tmp, "data/tasks", taskId)), "task directory removed");
  assert(pageErrors.length === 0, `page errors: ${pageErrors.join("; ")}`);
  log("ok; screenshot in test-output/browser.png");
});
