//! A real browser for the console's tests: Debian's chromium, headless, driven over WebDriver
//! by its chromedriver, started on a free loopback port for one test and killed with it.
//!
//! The WebDriver protocol is JSON over HTTP; the few commands the tests use are spoken here
//! directly (with the HTTP client the workspace already has) rather than through a client crate.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const DRIVER: &str = "/usr/bin/chromedriver";
/// The key under which WebDriver names an element.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Whether the browser is installed; where CI requires it (`BULWARK_REQUIRE_BROWSER`), its
/// absence fails the test instead of skipping it.
pub fn available() -> bool {
    let here = std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(DRIVER).exists();
    if !here {
        assert!(std::env::var_os("BULWARK_REQUIRE_BROWSER").is_none(), "needs chromium and chromium-driver");
        eprintln!("skipped: needs chromium and chromium-driver");
    }
    here
}

pub struct Browser {
    driver: Child,
    http: ureq::Agent,
    base: String,
    /// The browser's profile: its own, gone with the test.
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.http.delete(&self.base).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    /// A headless chromium of `width`×`height` that takes the server's own certificate (its CA
    /// is not the system's).
    pub fn start(width: u32, height: u32) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(DRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let http = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
        let root = format!("http://127.0.0.1:{port}");
        let until = Instant::now() + Duration::from_secs(20);
        while http.get(&format!("{root}/status")).call().is_err() {
            assert!(Instant::now() < until, "chromedriver did not answer");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         format!("--window-size={width},{height}"),
                         format!("--user-data-dir={}", profile.path().display())],
            },
        }}});
        let mut b = Browser { driver, http, base: root.clone(), _profile: profile };
        let v = b.call("POST", &format!("{root}/session"), Some(caps));
        let id = v["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {v}")).to_string();
        b.base = format!("{root}/session/{id}");
        b
    }

    fn call(&self, method: &str, url: &str, body: Option<Value>) -> Value {
        self.try_call(method, url, body).unwrap_or_else(|v| panic!("WebDriver {method} {url}: {v}"))
    }

    /// The command's value, or the error WebDriver answered.
    fn try_call(&self, method: &str, url: &str, body: Option<Value>) -> Result<Value, Value> {
        let mut r = match (method, body) {
            ("GET", _) => self.http.get(url).call(),
            (_, b) => self.http.post(url).send_json(b.unwrap_or(json!({}))),
        }
        .unwrap_or_else(|e| panic!("WebDriver {url}: {e}"));
        let v: Value = r.body_mut().read_json().unwrap_or(Value::Null);
        match v["value"]["error"].is_null() {
            true => Ok(v["value"].clone()),
            false => Err(v["value"].clone()),
        }
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("{}{path}", self.base), body)
    }

    /// A command on the first element `css` selects, looked up again while the page replaces
    /// it (htmx swaps fragments, a form's answer loads a page): `None` if there is none.
    fn on_element(&self, css: &str, method: &str, path: &str, body: Option<Value>) -> Option<Value> {
        for _ in 0..50 {
            let e = self.all(css).into_iter().next()?;
            match self.try_call(method, &format!("{}/element/{e}{path}", self.base), body.clone()) {
                Ok(v) => return Some(v),
                // Chromium says either while a page is being replaced.
                Err(v)
                    if v["error"] == "stale element reference"
                        || v["message"].as_str().is_some_and(|m| m.contains("does not belong to the document")) =>
                {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(v) => panic!("WebDriver {method} {path} on {css:?}: {v}"),
            }
        }
        panic!("{css:?} kept being replaced")
    }

    pub fn go(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({"url": url})));
    }

    pub fn url(&self) -> String {
        self.cmd("GET", "/url", None).as_str().unwrap_or_default().to_string()
    }

    /// The elements `css` selects now.
    pub fn all(&self, css: &str) -> Vec<String> {
        let v = self.cmd("POST", "/elements", Some(json!({"using": "css selector", "value": css})));
        v.as_array().unwrap().iter().map(|e| e[ELEMENT].as_str().unwrap().to_string()).collect()
    }

    /// The first element `css` selects, waiting up to 10 s for one.
    pub fn find(&self, css: &str) -> String {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.all(css).into_iter().next() {
                return e;
            }
            assert!(Instant::now() < until, "no element {css:?} on {}:\n{}", self.url(), self.text("body"));
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The text of the first element `css` selects ("" if none).
    pub fn text(&self, css: &str) -> String {
        let v = self.on_element(css, "GET", "/text", None);
        v.and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
    }

    pub fn attribute(&self, css: &str, name: &str) -> Option<String> {
        self.find(css);
        self.on_element(css, "GET", &format!("/property/{name}"), None)?.as_str().map(str::to_string)
    }

    pub fn type_into(&self, css: &str, text: &str) {
        self.find(css);
        self.on_element(css, "POST", "/clear", None);
        self.on_element(css, "POST", "/value", Some(json!({"text": text})));
    }

    pub fn click(&self, css: &str) {
        self.find(css);
        self.on_element(css, "POST", "/click", None);
    }

    /// Runs `script` (an async function body ending with `return`) in the page; its result.
    pub fn run(&self, script: &str) -> Value {
        let wrapped = format!("const done = arguments[arguments.length - 1]; (async () => {{ {script} }})().then(done, e => done('error: ' + e));");
        self.cmd("POST", "/execute/async", Some(json!({"script": wrapped, "args": []})))
    }

    /// Waits up to `secs` for `f` to hold.
    pub fn wait(&self, secs: u64, what: &str, mut f: impl FnMut(&Browser) -> bool) {
        let until = Instant::now() + Duration::from_secs(secs);
        while !f(self) {
            assert!(Instant::now() < until, "timed out waiting for {what} on {}:\n{}", self.url(), self.text("body"));
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A PNG of the window.
    pub fn screenshot(&self) -> Vec<u8> {
        from_base64(self.cmd("GET", "/screenshot", None).as_str().unwrap())
    }

    /// Resizes the window (a phone's screen is 390 px wide).
    pub fn resize(&self, width: u32, height: u32) {
        self.cmd("POST", "/window/rect", Some(json!({"width": width, "height": height})));
    }
}

fn from_base64(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for q in digits.chunks(4) {
        let n = q.iter().enumerate().fold(0u32, |n, (i, d)| n | (*d as u32) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..q.len()]);
    }
    out
}
