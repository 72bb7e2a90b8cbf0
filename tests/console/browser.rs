//! A headless Chromium driven through its chromedriver (both from the distribution's
//! packages; `./test.sh` installs them), pointed at a test server's console.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use rivulet_testkit::{TEST_TOKEN, WAIT, wait_for};
use serde_json::{Value, json};

/// Where the distribution's packages put the two programs; `RIVULET_CHROMEDRIVER` and
/// `RIVULET_CHROMIUM` name others.
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// The window of a laptop screen; [`Browser::phone`] narrows it.
pub const DESKTOP: (u32, u32) = (1280, 720);

/// One browser session and the chromedriver behind it; both end when it is dropped.
pub struct Browser {
    pub client: Client,
    /// The console's address on the server under test (`http://127.0.0.1:PORT/ui/`).
    pub console: String,
    /// Where downloads land.
    pub downloads: tempfile::TempDir,
    _driver: tokio::process::Child,
}

fn program(variable: &str, default: &str) -> Option<PathBuf> {
    let path = std::env::var_os(variable)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    path.exists().then_some(path)
}

impl Browser {
    /// A browser at the console of the API listener `api`; `None` (with the reason printed)
    /// where Chromium or chromedriver is not installed, unless `RIVULET_REQUIRE_BROWSER` is
    /// set, as `./test.sh` does after installing them: then their absence fails the test.
    pub async fn open(api: &str) -> Option<Browser> {
        let (Some(driver), Some(chromium)) = (
            program("RIVULET_CHROMEDRIVER", CHROMEDRIVER),
            program("RIVULET_CHROMIUM", CHROMIUM),
        ) else {
            let reason = format!(
                "skipped: the console's browser tests need Chromium ({CHROMIUM}) and chromedriver ({CHROMEDRIVER}); ./test.sh installs them (Debian packages chromium and chromium-driver)"
            );
            assert!(
                std::env::var_os("RIVULET_REQUIRE_BROWSER").is_none(),
                "{reason}"
            );
            eprintln!("{reason}");
            return None;
        };
        let port = free_port();
        let driver = tokio::process::Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let downloads = tempfile::tempdir().expect("a download folder");
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--hide-scrollbars", "--force-device-scale-factor=1",
                    format!("--window-size={},{}", DESKTOP.0, DESKTOP.1),
                ],
                "prefs": {
                    "download.default_directory": downloads.path(),
                    "download.prompt_for_download": false,
                },
            }
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let webdriver = format!("http://127.0.0.1:{port}");
        let client = wait_for("chromedriver to take a session", WAIT, || {
            let capabilities = capabilities.clone();
            let webdriver = webdriver.clone();
            async move {
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(capabilities)
                    .connect(&webdriver)
                    .await
                    .ok()
            }
        })
        .await;
        let browser = Browser {
            client,
            console: format!("{}/ui/", api.trim_end_matches('/')),
            downloads,
            _driver: driver,
        };
        browser.resize(DESKTOP).await;
        Some(browser)
    }

    /// Sets the size of the page's viewport (the window less its frame).
    pub async fn resize(&self, (width, height): (u32, u32)) {
        self.client
            .set_window_size(width, height)
            .await
            .expect("the window resizes");
        let inner: Value = self
            .client
            .execute("return [window.innerWidth, window.innerHeight]", vec![])
            .await
            .expect("the window's size is readable");
        let dw = width as i64 - inner[0].as_i64().unwrap_or(width as i64);
        let dh = height as i64 - inner[1].as_i64().unwrap_or(height as i64);
        if dw != 0 || dh != 0 {
            self.client
                .set_window_size((width as i64 + dw) as u32, (height as i64 + dh) as u32)
                .await
                .expect("the window resizes");
        }
    }

    /// Opens the console at `route` (`#/tap`), logged out.
    pub async fn goto(&self, route: &str) {
        self.client
            .goto(&format!("{}{route}", self.console))
            .await
            .expect("the console loads");
    }

    /// Logs in with `token` on the login form.
    pub async fn log_in_with(&self, token: &str) {
        self.goto("").await;
        let input = self.wait_css("#login-token").await;
        input.send_keys(token).await.expect("typing the token");
        self.click("#login-submit").await;
    }

    /// Logs in as admin and waits for the console to show who is logged in.
    pub async fn log_in(&self) {
        self.log_in_with(TEST_TOKEN).await;
        self.wait_text("#whoami", "admin").await;
    }

    /// The element `css` selects, once it is there.
    pub async fn wait_css(&self, css: &str) -> Element {
        let what = format!("{css} on the page");
        wait_for(&what, WAIT, || async {
            self.client.find(Locator::Css(css)).await.ok()
        })
        .await
    }

    /// Waits until `css` is there and its text holds `text`; returns its text.
    pub async fn wait_text(&self, css: &str, text: &str) -> String {
        let what = format!("{css} to show {text:?}");
        wait_for(&what, WAIT, || async {
            let element = self.client.find(Locator::Css(css)).await.ok()?;
            let shown = element.text().await.ok()?;
            shown.contains(text).then_some(shown)
        })
        .await
    }

    /// The element's attribute, once `css` is there and the attribute is set.
    pub async fn wait_attr(&self, css: &str, attribute: &str) -> String {
        let what = format!("{css} with attribute {attribute}");
        wait_for(&what, WAIT, || async {
            let element = self.client.find(Locator::Css(css)).await.ok()?;
            element.attr(attribute).await.ok().flatten()
        })
        .await
    }

    /// A form field's current value (what is typed or loaded, not the HTML attribute), once
    /// `css` is there and holds something.
    pub async fn wait_value(&self, css: &str) -> String {
        let what = format!("{css} to hold a value");
        wait_for(&what, WAIT, || async {
            let element = self.client.find(Locator::Css(css)).await.ok()?;
            element
                .prop("value")
                .await
                .ok()
                .flatten()
                .filter(|value| !value.is_empty())
        })
        .await
    }

    pub async fn click(&self, css: &str) {
        self.wait_css(css)
            .await
            .click()
            .await
            .expect("the click lands");
    }

    /// Replaces what a text field holds (CodeMirror-free: plain inputs and text areas).
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.wait_css(css).await;
        field.clear().await.expect("the field clears");
        field.send_keys(text).await.expect("typing");
    }

    /// Sets a text area's value at once (typing a whole manifest key by key is slow) and
    /// tells the page, as typing would.
    pub async fn set_value(&self, css: &str, text: &str) {
        let field = self.wait_css(css).await;
        let field = serde_json::to_value(field).expect("an element serialises");
        self.client
            .execute(
                "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input', {bubbles: true}));",
                vec![field, json!(text)],
            )
            .await
            .expect("the field takes the text");
    }

    /// Runs `script` in the page and returns what it returns.
    pub async fn eval(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .expect("the script runs")
    }

    /// The route the console shows (`#/trace/ID`).
    pub async fn route(&self) -> String {
        let url = self.client.current_url().await.expect("the URL");
        url.fragment().map(|f| format!("#{f}")).unwrap_or_default()
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        self.client.screenshot().await.expect("a screenshot")
    }

    /// The file a download left in the download folder, once it is complete.
    pub async fn downloaded(&self, suffix: &str) -> PathBuf {
        let folder = self.downloads.path().to_path_buf();
        wait_for("the download to finish", WAIT, || {
            let folder = folder.clone();
            async move { finished_download(&folder, suffix) }
        })
        .await
    }
}

fn finished_download(folder: &Path, suffix: &str) -> Option<PathBuf> {
    std::fs::read_dir(folder)
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.to_string_lossy().ends_with(suffix))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// How long the page should get before a check that something did not happen.
pub const SETTLE: Duration = Duration::from_millis(500);
