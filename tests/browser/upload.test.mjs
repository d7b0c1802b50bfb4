// Browser test of uploads on the tubescribe web page: headless Chromium (playwright-core)
// against `tubescribe serve` with a private data dir and embedded Redis. One speech file is
// chosen with the file picker, another dropped on the form (a real `drop` event carrying a
// File); each becomes an `upload-…` task whose three stages finish and whose transcript has
// the words spoken. Screenshot in test-output/browser-upload.png. Run by scripts/test.sh.
import fs from "node:fs";
import { assert, clipWav, run, screenshot, speechWav, startServer, openBrowser } from "./harness.mjs";

await run("browser-upload", 240_000, async (h) => {
  const { log } = h;
  const jfk = speechWav(h);
  const other = clipWav(h, "librispeech-1272-128104-0000",
    "Mister Quilter is the apostle of the middle classes, and we are glad to welcome his gospel.");
  // No media URL is served: port 9 (discard) is only there to satisfy the allow-list flag.
  const base = await startServer(h, 9);
  log("server at", base);
  const { page, pageErrors } = await openBrowser(h, { width: 1280, height: 900 });
  await page.goto(base + "/");

  // Submit the message's task and wait until its three stages are done; returns its id.
  const submitAndFinish = async (expectName) => {
    assert((await page.locator("#file-name").innerText()).startsWith(`${expectName} (`), "chosen file shown");
    assert(!(await page.getByLabel("Video URL").evaluate((e) => e.required)), "URL not required with a file");
    const before = await page.locator("#message").innerText();
    await page.getByRole("button", { name: "Transcribe" }).click();
    // A message from an earlier submission may still be shown as ok: wait for a new one.
    await page.waitForFunction((b) => {
      const m = document.querySelector("#message");
      return m.classList.contains("ok") && m.innerText !== b;
    }, before, { timeout: 30_000 });
    const msg = await page.locator("#message").innerText();
    assert(/^Submitted: task upload-[0-9a-f]{16}\.$/.test(msg), `submit message: ${msg}`);
    const taskId = msg.match(/task (\S+?)\.$/)[1];
    log("submitted", taskId);
    // The form is ready for the next submission: no file, the URL required again.
    assert(await page.locator("#file-name").innerText() === "", "file cleared after the upload");
    assert(await page.getByLabel("Video URL").evaluate((e) => e.required), "URL required again");
    return taskId;
  };
  const waitDone = async (taskId) => {
    const item = page.locator(`li[data-task="${taskId}"]`);
    for (const s of ["download", "transcribe", "summarize"])
      await item.locator(`.stage[data-stage="${s}"][data-state="completed"]`).waitFor({ timeout: 180_000 });
    assert(await item.getAttribute("data-status") === "completed", `${taskId} completed`);
    const r = await fetch(`${base}/api/tasks/${taskId}/transcript.txt`);
    assert(r.status === 200, `transcript of ${taskId}: HTTP ${r.status}`);
    return (await r.text()).toLowerCase();
  };

  // 1. The file picker.
  await page.getByLabel("…or a media file").setInputFiles(jfk);
  const picked = await submitAndFinish("jfk.wav");

  // 2. Drag and drop: the form shows it is a drop target, then takes the dropped file.
  const bytes = fs.readFileSync(other).toString("base64");
  const dt = await page.evaluateHandle((b64) => {
    const raw = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const d = new DataTransfer();
    d.items.add(new File([raw], "dropped speech.wav", { type: "audio/wav" }));
    return d;
  }, bytes);
  await page.dispatchEvent("#submit-form", "dragenter", { dataTransfer: dt });
  assert(await page.locator("#submit-form.dragging").count() === 1, "drop target highlighted");
  await page.dispatchEvent("#submit-form", "drop", { dataTransfer: dt });
  assert(await page.locator("#submit-form.dragging").count() === 0, "highlight gone after the drop");
  const dropped = await submitAndFinish("dropped speech.wav");
  assert(dropped !== picked, "two files, two tasks");

  const t1 = await waitDone(picked);
  assert(t1.includes("your country can do for you"), `picked transcript: ${t1}`);
  const t2 = await waitDone(dropped);
  assert(t2.includes("apostle") && t2.includes("middle classes"), `dropped transcript: ${t2}`);
  // The upload's name is the task's title.
  const m = await (await fetch(`${base}/api/tasks/${dropped}`)).json();
  assert(m.input === "dropped speech.wav", `input: ${m.input}`);
  assert(pageErrors.length === 0, `page errors: ${pageErrors.join("; ")}`);
  await screenshot(page, "browser-upload.png");
  log("ok; screenshot in test-output/browser-upload.png");
});
