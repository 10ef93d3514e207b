// Screenshot of the MLflow UI's chart view (per-epoch curves of every run) in headless Chromium:
//   npm install puppeteer-core@23 && node scripts/mlflow_ui_screenshot.js [URL] [OUT.png]
// URL: the MLflow server (default http://127.0.0.1:5000), OUT: the PNG (default mlflow_chart_view.png).
const puppeteer = require('puppeteer-core');
const server = process.argv[2] || 'http://127.0.0.1:5000';
const out = process.argv[3] || 'mlflow_chart_view.png';
(async () => {
  const browser = await puppeteer.launch({executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu'], defaultViewport: {width: 1600, height: 1100}});
  const page = await browser.newPage();
  await page.goto(server + '/#/experiments/1?workflowType=machine_learning', {waitUntil: 'networkidle0'});
  await new Promise(r => setTimeout(r, 3000));
  // close the assistant panel if present
  for (const b of await page.$$('button[aria-label="Close"]')) { try { await b.click(); } catch (e) {} }
  // switch to the chart view: the second toggle button of the view switcher
  const clicked = await page.evaluate(() => {
    const el = [...document.querySelectorAll('[data-testid], button, label, div[role="radio"], input[type="radio"]')]
      .find(e => /chart/i.test(e.getAttribute('data-testid') || '') || /chart/i.test(e.getAttribute('aria-label') || '') || /chart/i.test(e.getAttribute('value') || ''));
    if (el) { el.click(); return (el.getAttribute('data-testid') || el.getAttribute('aria-label') || el.getAttribute('value')); }
    return null;
  });
  console.log('clicked', clicked);
  await new Promise(r => setTimeout(r, 6000));
  const box = await page.$('input[placeholder="Search metric charts"]'); if (box) { await box.type('val_balanced_accuracy'); await new Promise(r => setTimeout(r, 3000)); }
  await page.screenshot({path: out});
  await browser.close();
})();
