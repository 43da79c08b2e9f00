// Drive the web example (examples/web) in headless Chromium as a visitor would: pick each sample
// digit, then draw one, and report what the page computed for each as JSON on stdout.
//
//   node drive_page.mjs URL SAMPLES SCREENSHOT.png
//
// Chromium is Debian's (/usr/bin/chromium, or $CHROMIUM); playwright-core brings no browser.
import { chromium } from "playwright-core";

const [url, sampleCount, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  // Root in a container: no sandbox; and no background traffic to hosts this machine cannot reach.
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 800 } });
  const errors = [];
  page.on("pageerror", (error) => errors.push(error.message));
  await page.goto(url);
  await page.waitForSelector("body[data-state]", { timeout: 120000 });
  const state = await page.getAttribute("body", "data-state");
  if (state !== "ready") {
    throw new Error(`page failed: ${await page.textContent("#status")} ${errors.join("; ")}`);
  }
  const results = [];
  const runOnce = async (action) => {
    const runs = results.length + 1;
    await action();
    await page.waitForSelector(`body[data-runs="${runs}"]`, { timeout: 60000 });
    results.push(await page.evaluate(() => window.stnResult));
  };
  for (let i = 0; i < Number(sampleCount); i++) {
    await runOnce(() => page.click(`[data-sample="${i}"]`));
  }
  // A drawn stroke: a "7" across the pad.
  await page.click("#clear");
  const box = await page.locator("#pad").boundingBox();
  const point = (x, y) => [box.x + (x / 42) * box.width, box.y + (y / 42) * box.height];
  await runOnce(async () => {
    await page.mouse.move(...point(12, 12));
    await page.mouse.down();
    for (const [x, y] of [[30, 12], [24, 22], [18, 32]]) {
      await page.mouse.move(...point(x, y), { steps: 8 });
    }
    await page.mouse.up();
  });
  await page.screenshot({ path: screenshot });
  const status = await page.textContent("#status");
  const prediction = await page.textContent("#prediction");
  console.log(JSON.stringify({ status, prediction, errors, results }));
} finally {
  await browser.close();
}
