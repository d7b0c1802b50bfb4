// Browser test of the web page's harder states, in Debian's headless Chromium against a real
// `tubescribe serve` that requires an API token (its own data dir and embedded Redis, tiny.en,
// a loopback media server):
// - a submit without the token gets a 401: the token panel opens with the cursor in it; with the
//   token the submit goes through, and the token survives a reload (local storage) and is sent
//   as Bearer on the next submit;
// - a media URL that answers 404 fails the task with a long unbroken error: the green
//   "Submitted" message turns into the failure;
// - a media URL that answers 503 once shows "download retrying after: … 503 …" until the
//   retry (download backoff 6 s from a config file) succeeds;
// - a download that stalls at 10 % and is cancelled from the page shows no progress bar;
// - at 400 px and 1400 px nothing overflows: document, task cards, the task view, the message
//   (scrollWidth ≤ clientWidth), and every card's state column lies inside its card.
// Screenshots: test-output/browser-400.png, test-output/browser-1400.png. Run by scripts/test.sh.
import fs from "node:fs";
import path from "node:path";
import { assert, openBrowser, run, screenshot, sendWav, serveHttp, speechWav, startServer } from "./harness.mjs";

const TOKEN = "browser-test-token-7f3a9c";
// One unbroken run of 400 characters: only overflow-wrap can break it.
const MISSING = `/missing/${"x".repeat(400)}.wav`;

await run("browser-states", 240_000, async (h) => {
  const { log } = h;
  const wav = speechWav(h);
  let flakyGets = 0;
  const mediaPort = await serveHttp(h, (req, res) => {
    if (req.url === "/flaky.wav") {
      if (req.method === "GET" && flakyGets++ === 0) res.writeHead(503).end();
      else sendWav(req, res, wav);
    } else if (req.url === "/stall.wav") {
      // A tenth of the announced body, then nothing: the download stays active at 10 %.
      res.writeHead(200, { "content-type": "audio/wav", "content-length": 50_000_000 });
      res.write(Buffer.alloc(5_000_000));
    } else {
      res.writeHead(404).end();
    }
  });
  const config = path.join(h.tmp, "tubescribe.toml");
  fs.writeFileSync(config, "[stages.download]\nbackoff_s = 6\n");
  const base = await startServer(h, mediaPort, { TUBESCRIBE_API_TOKEN: TOKEN, TUBESCRIBE_CONFIG: config });
  log("server at", base);
  const { page, pageErrors } = await openBrowser(h, { width: 1400, height: 900 });
  await page.goto(base + "/");
  const media = (p) => `http://127.0.0.1:${mediaPort}${p}`;
  const message = () => page.locator("#message").innerText();
  async function submit(link) {
    await page.getByLabel("Video URL").fill(link);
    await page.getByLabel("Video URL").press("Enter");
  }
  // Submits `link` and returns the new task's id from the message that replaces the current one.
  async function submitted(link) {
    const before = await message();
    await submit(link);
    // The text is taken when it appears: a task that fails at once replaces it within ms.
    const seen = await page.waitForFunction((prev) => {
      const m = document.querySelector("#message");
      const ok = m.className === "ok" && m.textContent !== prev && m.textContent.startsWith("Submitted: task ");
      return ok && m.textContent;
    }, before, { timeout: 10_000 });
    const m = await seen.jsonValue();
    const id = m.match(/^Submitted: task (\S+?)\.$/);
    assert(id, `submit message: ${m}`);
    return id[1];
  }
  const card = (id, status) => page.locator(`li[data-task="${id}"]${status ? `[data-status="${status}"]` : ""}`);
  const manifest = (id) => JSON.parse(fs.readFileSync(path.join(h.tmp, "data/tasks", id, "manifest.json"), "utf8"));

  // 401: the token panel opens, with the cursor in the token field.
  const panelOpen = () => page.locator("#token-panel").evaluate((d) => d.open);
  assert(!(await panelOpen()), "the token panel starts closed");
  await submit(media(MISSING));
  await page.locator("#message.error").waitFor({ timeout: 10_000 });
  const refused = await message();
  assert(/needs an API token/.test(refused), `401 message: ${refused}`);
  assert(await panelOpen(), "a 401 opens the token panel");
  assert(await page.evaluate(() => document.activeElement.id) === "token", "the cursor is in the token field");
  assert(/needs an API token/.test(await page.locator("#token-why").innerText()), "the panel says why");
  log("401 opens the token panel:", refused);

  // With the token the same submit goes through; the task fails (HTTP 404) and the green
  // "Submitted" message turns into that failure.
  await page.locator("#token").fill(TOKEN);
  const failedId = await submitted(media(MISSING));
  await card(failedId, "failed").waitFor({ timeout: 60_000 });
  await page.locator("#message.error").waitFor({ timeout: 10_000 });
  const failedMsg = await message();
  assert(failedMsg.startsWith(`Task ${failedId} failed: the download stage failed:`) && failedMsg.includes("404"),
    `message after the failure: ${failedMsg}`);
  const errText = await card(failedId).locator(".error-box").innerText();
  assert(errText.includes("x".repeat(400)), `the long error is in the card: ${errText.slice(0, 120)}…`);
  log("failure replaces the submit message:", failedMsg.slice(0, 100) + "…");

  // The token survives a reload and is sent as Bearer (this server refuses POSTs without it).
  await page.reload();
  assert(await page.locator("#token").inputValue() === TOKEN, "token restored after reload");
  assert(await page.evaluate(() => localStorage.getItem("tubescribe.apiToken")) === TOKEN, "token in local storage");
  const flakyId = await submitted(media("/flaky.wav"));
  log("token kept across the reload; submitted", flakyId);

  // The first download attempt gets a 503: the card says it retries, and why, until it does.
  const retry = card(flakyId).locator(".retry");
  await retry.waitFor({ timeout: 60_000 });
  const retryText = await retry.innerText();
  assert(/^download retrying after: .*503.* \(next attempt 2 at \d/.test(retryText), `retry line: ${retryText}`);
  assert(await card(flakyId).locator('.stage[data-stage="download"] .state').innerText() === "retrying",
    "download state column says retrying");
  log("retrying shown:", retryText);
  await card(flakyId, "completed").waitFor({ timeout: 90_000 });
  assert(await retry.count() === 0, "the retry line goes once the download succeeds");
  assert(flakyGets === 2, `two download attempts, got ${flakyGets}`);
  log("the retry succeeded; task completed");

  // A download stalled at 10 %, cancelled from the task view: no progress bars, the stages
  // say cancelled/skipped, also once the worker has stopped the download and after a reload.
  const stallId = await submitted(media("/stall.wav"));
  await page.waitForFunction((id) => {
    const p = document.querySelector(`li[data-task="${id}"] .stage[data-stage="download"] progress`);
    return p && Number(p.value) >= 5;
  }, stallId, { timeout: 60_000 });
  await card(stallId).locator("button.title").click();
  await page.locator("#view").getByRole("button", { name: "Cancel" }).click();
  await card(stallId, "cancelled").waitFor({ timeout: 10_000 });
  const deadline = Date.now() + 30_000;
  while (manifest(stallId).stages.download.state === "active") {
    assert(Date.now() < deadline, "the worker did not stop the cancelled download within 30 s");
    await new Promise((ok) => setTimeout(ok, 200));
  }
  await page.waitForTimeout(500);
  for (const when of ["live", "after reload"]) {
    if (when === "after reload") await page.reload();
    const c = card(stallId, "cancelled");
    await c.waitFor({ timeout: 10_000 });
    assert(await c.locator("progress").count() === 0, `cancelled task has no progress bar (${when})`);
    const states = await c.locator(".stage .state").allInnerTexts();
    assert(JSON.stringify(states) === JSON.stringify(["cancelled", "skipped", "skipped"]), `cancelled states (${when}): ${states}`);
    assert((await c.locator(".badge").innerText()) === "cancelled", "cancelled badge");
  }
  log("cancelled: no progress bar");

  // Narrow and wide: nothing overflows, the state column stays inside each card. The failed
  // task is open in the view, so its long error shows there too.
  await card(failedId).locator("button.title").click();
  await page.locator("#view .error-box").waitFor({ timeout: 10_000 });
  // The message line shows the failure again (the longest text it showed).
  await page.evaluate((t) => { document.querySelector("#message").textContent = t; }, failedMsg);
  for (const width of [400, 1400]) {
    await page.setViewportSize({ width, height: 900 });
    await page.evaluate(() => new Promise((ok) => requestAnimationFrame(() => requestAnimationFrame(ok))));
    const r = await page.evaluate(() => {
      const d = document.documentElement;
      const name = (e) => e.dataset.task || e.id || e.className;
      const boxes = [...document.querySelectorAll("li.task, li.task .error-box, section.view, #view .error-box, #message, form.submit")];
      const cut = [...document.querySelectorAll("li.task")].flatMap((c) => {
        const box = c.getBoundingClientRect();
        return [...c.querySelectorAll(".stage .state")].filter((s) => {
          const b = s.getBoundingClientRect();
          return b.left < box.left || b.right > box.right || s.scrollWidth > s.clientWidth;
        }).map((s) => `${name(c)}/${s.closest(".stage").dataset.stage}`);
      });
      return { doc: [d.scrollWidth, d.clientWidth], cards: document.querySelectorAll("li.task").length,
               over: boxes.filter((b) => b.scrollWidth > b.clientWidth).map((b) => `${name(b)} ${b.scrollWidth}>${b.clientWidth}`), cut };
    });
    log(`${width} px:`, JSON.stringify(r));
    assert(r.cards === 3, `three task cards, got ${r.cards}`);
    assert(r.doc[0] <= r.doc[1], `${width} px: document scrollWidth ${r.doc[0]} > clientWidth ${r.doc[1]}`);
    assert(r.over.length === 0, `${width} px: overflowing boxes: ${r.over.join(", ")}`);
    assert(r.cut.length === 0, `${width} px: state column cut: ${r.cut.join(", ")}`);
    await screenshot(page, `browser-${width}.png`);
  }
  assert(pageErrors.length === 0, `page errors: ${pageErrors.join("; ")}`);
  log("ok; screenshots in test-output/browser-400.png, browser-1400.png");
});
