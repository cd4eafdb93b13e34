//! The web console in a real browser (headless chromium over WebDriver) against a real server
//! with a transport node and an agent on loopback: log in, start a job and watch its session
//! reach 100%, then what a viewer, a forged form and a hostile name can and cannot do.

mod browser;
mod cluster;

use browser::Browser;
use cluster::server::{cli, viewer_token, Site};
use serde_json::Value;
use std::time::Duration;

fn admin_password(site: &Site) -> String {
    std::fs::read_to_string(site.server.dir.join("initial-admin-password")).unwrap().trim().to_string()
}

fn log_in(b: &Browser, base: &str, name: &str, password: &str) {
    b.go(&format!("{base}/ui/login"));
    b.type_into("input[name=name]", name);
    b.type_into("input[name=password]", password);
    b.click("form[action='/ui/login'] button[type=submit]");
}

/// Saves a screenshot of the page as `docs/screenshots/NAME.png` when asked to
/// (`BULWARK_SCREENSHOTS=DIR`, as `scripts/console-screenshots.sh` does).
fn shoot(b: &Browser, name: &str) {
    if let Some(dir) = std::env::var_os("BULWARK_SCREENSHOTS") {
        let png = b.screenshot();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), png).unwrap();
    }
}

/// The files under `dir`, relative, sorted.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// `fetch` from the page (with its cookie): the status of a POST of `form` to `path`.
fn post_from_page(b: &Browser, path: &str, form: &str) -> u64 {
    let script = format!(
        "const r = await fetch({path:?}, {{method: 'POST', body: new URLSearchParams({form}), redirect: 'manual'}}); return r.status;"
    );
    b.run(&script).as_u64().unwrap_or_else(|| panic!("fetch {path} failed"))
}

#[test]
fn an_operator_logs_in_starts_a_job_and_watches_it_finish_while_viewers_and_forgeries_are_refused() {
    if !browser::available() {
        return;
    }
    let site = Site::new();
    let disk = site.dir.path().join("disk.img");
    bulwark_imagegen::generate(&disk, 64 << 20, 3).unwrap();
    let base = format!("https://{}", site.server.address);
    let b = Browser::start(1280, 800);

    // The server's root leads to the console, which asks for a login first.
    b.go(&format!("{base}/"));
    b.wait(10, "the login page", |b| b.url().ends_with("/ui/login"));
    log_in(&b, &base, "admin", "not the password");
    b.wait(10, "the refusal", |b| b.text("p.error").contains("wrong user name or password"));
    log_in(&b, &base, "admin", &admin_password(&site));
    b.wait(10, "the dashboard", |b| b.text("h1") == "Dashboard");
    assert!(b.text("body").contains("pc-1"), "{}", b.text("body"));
    // The session cookie is not for scripts.
    assert_eq!(b.run("return document.cookie;"), Value::String(String::new()));

    // Create the job through the wizard. Each bad answer is said by the part it concerns, in
    // words, and stores nothing; markup in a name stays text.
    b.go(&format!("{base}/ui/jobs"));
    b.click("a[href='/ui/jobs/new']");
    b.wait(10, "the job wizard", |b| b.text("h1") == "New job");
    let jobs = || cli(&site.server, &["job", "list"]).unwrap().as_array().unwrap().len();
    let submit = |b: &Browser| b.click("form[action='/ui/jobs/new'] button[type=submit]");
    b.type_into("input[name=name]", "<script>document.title='pwned'</script>");
    b.click("input[name=computer][value='pc-1']");
    b.type_into("textarea[name=sources]", disk.to_str().unwrap());
    b.click("select[name=snapshot] option[value=none]");
    submit(&b);
    b.wait(10, "the name's refusal", |b| b.text("fieldset:nth-of-type(1) p.error").contains("use 1-64 letters"));
    assert_eq!(b.attribute("input[name=name]", "value").as_deref(), Some("<script>document.title='pwned'</script>"));
    assert_ne!(b.run("return document.title;"), Value::String("pwned".into()));
    b.type_into("input[name=name]", "nightly");
    b.click("input[name=schedule][value=daily]");
    b.type_into("input[name=at]", "25:99");
    submit(&b);
    b.wait(10, "the schedule's refusal", |b| !b.text("fieldset:nth-of-type(5) p.error").is_empty());
    shoot(&b, "job-wizard");
    b.type_into("input[name=at]", "22:00");
    b.type_into("input[name=keep_last]", "99999999999999999999999");
    submit(&b);
    b.wait(10, "the retention's refusal", |b| b.text("fieldset:nth-of-type(6) p.error").contains("not a whole number"));
    assert_eq!(jobs(), 0, "a refused wizard stored a job");
    // What was chosen survives the refusals.
    assert_eq!(b.run("return document.querySelector('input[name=computer][value=pc-1]').checked;"), Value::Bool(true));
    b.type_into("input[name=keep_last]", "3");
    submit(&b);
    b.wait(10, "the jobs page", |b| b.text("h1") == "Jobs");
    let created = cli(&site.server, &["job", "show", "nightly"]).unwrap();
    assert_eq!(created["computers"][0], "pc-1", "{created:#}");
    assert_eq!(created["snapshot"], "none", "{created:#}");
    assert_eq!(created["schedule"]["at"], "22:00", "{created:#}");
    assert_eq!(created["retention"]["keep_last"], 3, "{created:#}");

    // Start the job from the jobs page; the session page follows it to the end.
    b.go(&format!("{base}/ui/jobs"));
    shoot(&b, "jobs");
    b.click("form[action='/ui/jobs/nightly/start'] button");
    b.wait(10, "the session page", |b| b.url().contains("/ui/sessions/"));
    let mut seen_running = false;
    b.wait(120, "the task to succeed", |b| {
        seen_running |= b.all("tr.task[data-status=running]").len() == 1;
        b.all("tr.task[data-status=success]").len() == 1 && b.all("div.session[data-status=success]").len() == 1
    });
    assert_eq!(b.text("tr.task .percent"), "100%");
    // The task's log is on the page, the agent's notes with it.
    assert!(b.all("details.log").len() == 1, "no log on the session page");
    shoot(&b, "session");
    assert_eq!(b.text("tr.task td:first-child"), "pc-1");
    let points = cli(&site.server, &["point", "list"]).unwrap();
    assert_eq!(points.as_array().unwrap().len(), 1, "{points:#}");
    eprintln!("the session was seen running: {seen_running}");
    b.go(&format!("{base}/ui/"));
    assert!(b.text("body").contains("No session is running"), "{}", b.text("body"));
    shoot(&b, "dashboard");
    // On a phone's screen the page still fits its width (tables scroll inside themselves).
    b.resize(390, 844);
    let overflow = b.run("return document.documentElement.scrollWidth - document.documentElement.clientWidth;");
    assert_eq!(overflow.as_i64(), Some(0), "the dashboard is wider than a phone's screen");
    shoot(&b, "dashboard-phone");
    b.resize(1280, 800);

    // Restore the point through the wizard, onto the same computer, to a new image file. A
    // target the API refuses is said next to its field, and starts nothing.
    b.go(&format!("{base}/ui/points"));
    b.wait(10, "the points page", |b| b.all("tr.point").len() == 1);
    assert!(b.text("tr.point").contains("pc-1"), "{}", b.text("tr.point"));
    b.click("tr.point a[href$='/restore']");
    b.wait(10, "the restore wizard", |b| b.text("h1") == "Restore");
    shoot(&b, "restore-wizard");
    let restores_before = cli(&site.server, &["session", "list"]).unwrap().as_array().unwrap().len();
    b.type_into("input[name=target]", "restored.img");
    b.click("form[action$='/restore'] button[type=submit]");
    b.wait(10, "the refusal", |b| b.text("small.error").contains("must be an absolute path"));
    assert_eq!(cli(&site.server, &["session", "list"]).unwrap().as_array().unwrap().len(), restores_before);
    let restored = site.dir.path().join("restored.img");
    b.type_into("input[name=target]", restored.to_str().unwrap());
    b.click("form[action$='/restore'] button[type=submit]");
    b.wait(10, "the restore's session", |b| b.url().contains("/ui/sessions/"));
    b.wait(120, "the restore to succeed", |b| b.all("div.session[data-status=success]").len() == 1);
    assert!(std::fs::read(&restored).unwrap() == std::fs::read(&disk).unwrap(), "the restored image differs");

    // Files: a file-level point browsed one directory at a time; a file downloads as it was;
    // the checked ones restore onto the computer.
    let docs = site.dir.path().join("docs");
    std::fs::create_dir_all(docs.join("letters")).unwrap();
    std::fs::write(docs.join("letters/hello.txt"), "dear operator\n").unwrap();
    std::fs::write(docs.join("notes.txt"), "not this one\n").unwrap();
    let job = ["job", "create", "docs", "--mode", "files", "--computer", "pc-1", "--repository", "main"];
    cli(&site.server, &[&job[..], &["--source", docs.to_str().unwrap()]].concat()).unwrap();
    let done = cli(&site.server, &["job", "start", "docs", "--wait"]).unwrap();
    assert_eq!(done["status"], "success", "{done:#}");
    b.go(&format!("{base}/ui/points"));
    b.wait(10, "two points", |b| b.all("tr.point").len() == 2);
    // The newest first: the file-level one.
    b.click("tr.point a[href$='/files']");
    b.wait(10, "the point's root", |b| b.all("tr.entry[data-name=letters]").len() == 1);
    b.click("tr.entry[data-name=letters] a");
    b.wait(10, "the directory", |b| b.all("tr.entry[data-name='hello.txt']").len() == 1);
    let href = b.attribute("tr.entry[data-name='hello.txt'] a.download", "href").unwrap();
    let got = b.run(&format!("const r = await fetch({href:?}); return r.status + ' ' + await r.text();"));
    assert_eq!(got, Value::String("200 dear operator\n".into()));
    shoot(&b, "files");
    b.click("tr.entry[data-name='hello.txt'] input[type=checkbox]");
    let into = site.dir.path().join("restored-files");
    b.type_into("input[name=target]", into.to_str().unwrap());
    b.click("form[action$='/files'] button[type=submit]");
    b.wait(10, "the restore's session", |b| b.url().contains("/ui/sessions/"));
    b.wait(60, "the restore to succeed", |b| b.all("div.session[data-status=success]").len() == 1);
    let restored: Vec<_> = walk(&into);
    assert_eq!(restored, ["letters/hello.txt"], "restored more or less than was checked");
    assert_eq!(std::fs::read_to_string(into.join("letters/hello.txt")).unwrap(), "dear operator\n");

    // A form without its token is refused, and starts nothing.
    let sessions_before = cli(&site.server, &["session", "list"]).unwrap().as_array().unwrap().len();
    assert_eq!(post_from_page(&b, "/ui/jobs/nightly/start", "{}"), 403);
    assert_eq!(post_from_page(&b, "/ui/jobs/nightly/start", "{csrf: 'forged'}"), 403);
    assert_eq!(cli(&site.server, &["session", "list"]).unwrap().as_array().unwrap().len(), sessions_before);

    // Computers, repositories and transport nodes; a join token made once and listed.
    b.go(&format!("{base}/ui/computers"));
    b.wait(10, "the computers", |b| b.text("tr.computer").contains("pc-1"));
    // A protection group of the computers checked; a name that is not one is refused in words.
    b.type_into("form[action='/ui/groups'] input[name=name]", "web servers!");
    b.click("form[action='/ui/groups'] input[value='pc-1']");
    b.click("form[action='/ui/groups'] button[type=submit]");
    b.wait(10, "the refusal", |b| b.text("form[action='/ui/groups'] p.error").contains("letters"));
    b.type_into("form[action='/ui/groups'] input[name=name]", "web");
    b.click("form[action='/ui/groups'] input[value='pc-1']");
    b.click("form[action='/ui/groups'] button[type=submit]");
    b.wait(10, "the group", |b| b.text("tr.group").contains("pc-1"));
    let groups = cli(&site.server, &["group", "list"]).unwrap();
    assert_eq!(groups[0]["name"], "web", "{groups:#}");
    b.go(&format!("{base}/ui/repositories"));
    b.wait(10, "the repositories", |b| b.text("h1") == "Repositories");
    assert!(b.text("body").contains("main") && b.text("body").contains("store"), "{}", b.text("body"));
    // A repository added from the page: a path outside the node's roots is refused in words
    // and adds nothing; one inside is made by the node.
    let repos = || cli(&site.server, &["repository", "list"]).unwrap().as_array().unwrap().len();
    b.type_into("form[action='/ui/repositories'] input[name=name]", "second");
    b.type_into("form[action='/ui/repositories'] input[name=path]", "/nowhere/second");
    b.click("form[action='/ui/repositories'] button[type=submit]");
    b.wait(30, "the refusal", |b| !b.text("form[action='/ui/repositories'] p.error").is_empty());
    assert_eq!(repos(), 1);
    assert_eq!(b.attribute("form[action='/ui/repositories'] input[name=name]", "value").as_deref(), Some("second"));
    let second = site.dir.path().join("repos/second");
    b.type_into("form[action='/ui/repositories'] input[name=path]", second.to_str().unwrap());
    b.click("form[action='/ui/repositories'] button[type=submit]");
    b.wait(30, "the new repository", |b| b.text("tbody").contains("second"));
    assert_eq!(repos(), 2);
    b.go(&format!("{base}/ui/access"));
    b.type_into("form[action='/ui/access'] input[name=name]", "pc-2");
    b.click("form[action='/ui/access'] button[type=submit]");
    b.wait(10, "the new join token", |b| !b.text("#new-token").is_empty());
    let token = b.text("#new-token");
    let listed = cli(&site.server, &["token", "list"]).unwrap();
    assert!(listed.as_array().unwrap().iter().any(|t| t["kind"] == "join" && t["name"] == "pc-2"), "{listed:#}");
    assert!(!listed.to_string().contains(&token), "a listing shows a join token's secret");
    b.go(&format!("{base}/ui/access"));
    assert!(b.all("#new-token").is_empty(), "a join token is shown more than once");

    // Sessions by job and result.
    b.go(&format!("{base}/ui/sessions?job=docs&status=success"));
    b.wait(10, "the filtered sessions", |b| b.text("h1") == "Sessions");
    let rows = b.run("return [...document.querySelectorAll('tbody tr')].map(r => r.children[1].textContent);");
    assert_eq!(rows, serde_json::json!(["docs"]));
    b.go(&format!("{base}/ui/sessions?job=nightly&status=failed"));
    b.wait(10, "no failed session", |b| b.text("body").contains("No session here"));

    // Users: a password too short is refused by the API in words; a user made, then deleted.
    b.go(&format!("{base}/ui/access"));
    b.type_into("form[action='/ui/users'] input[name=name]", "ops");
    b.type_into("form[action='/ui/users'] input[name=password]", "short");
    b.click("form[action='/ui/users'] button[type=submit]");
    b.wait(10, "the refusal", |b| b.text("form[action='/ui/users'] p.error").contains("password"));
    b.type_into("form[action='/ui/users'] input[name=name]", "ops");
    b.type_into("form[action='/ui/users'] input[name=password]", "a long enough password");
    b.click("form[action='/ui/users'] button[type=submit]");
    b.wait(10, "the new user", |b| b.all("tr.user[data-name=ops]").len() == 1);
    b.click("tr.user[data-name=ops] button");
    b.wait(10, "the user gone", |b| b.text("h1") == "Access" && b.all("tr.user[data-name=ops]").is_empty());

    // Deleting a job asks first.
    b.go(&format!("{base}/ui/jobs"));
    b.click("a[href='/ui/jobs/docs/delete']");
    b.wait(10, "the question", |b| b.text("h1") == "Delete a job");
    b.click("form[action='/ui/jobs/docs/delete'] button");
    b.wait(10, "the jobs", |b| b.text("h1") == "Jobs");
    let names: Vec<String> = cli(&site.server, &["job", "list"])
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["nightly"]);

    // Every page fits a phone's screen (tables scroll inside themselves).
    b.resize(390, 844);
    for page in [
        "/ui/",
        "/ui/jobs",
        "/ui/jobs/new",
        "/ui/sessions",
        "/ui/points",
        "/ui/computers",
        "/ui/groups/web",
        "/ui/repositories",
        "/ui/repositories/main",
        "/ui/jobs/nightly/edit",
        "/ui/access",
    ] {
        b.go(&format!("{base}{page}"));
        b.wait(10, page, |b| !b.text("h1").is_empty());
        let overflow = b.run("return document.documentElement.scrollWidth - document.documentElement.clientWidth;");
        assert_eq!(overflow.as_i64(), Some(0), "{page} is wider than a phone's screen");
    }
    b.resize(1280, 800);

    // Log out: the session's token no longer opens anything.
    b.click("form[action='/ui/logout'] button");
    b.wait(10, "the login page", |b| b.url().ends_with("/ui/login"));
    b.go(&format!("{base}/ui/jobs"));
    b.wait(10, "the login page again", |b| b.url().ends_with("/ui/login"));

    // A viewer sees no buttons, and posting the form anyway (with its own valid token) is
    // refused by the API's own check.
    viewer_token(&site.server);
    log_in(&b, &base, "eve", "0123456789ab");
    b.wait(10, "the dashboard", |b| b.text("h1") == "Dashboard");
    b.go(&format!("{base}/ui/jobs"));
    b.wait(10, "the jobs page", |b| b.text("h1") == "Jobs");
    assert!(b.text("body").contains("nightly"));
    assert!(b.all("form[action$='/start']").is_empty(), "a viewer is offered Start");
    assert!(b.all("a[href='/ui/access']").is_empty(), "a viewer is offered Access");
    b.go(&format!("{base}/ui/access"));
    b.wait(10, "the refusal", |b| b.text("article.error").contains("may only read"));
    b.go(&format!("{base}/ui/jobs"));
    let token = b.attribute("input[name=csrf]", "value").unwrap();
    assert_eq!(post_from_page(&b, "/ui/jobs/nightly/start", &format!("{{csrf: {token:?}}}")), 403);
    b.go(&format!("{base}/ui/points"));
    b.wait(10, "the points page", |b| b.all("tr.point").len() == 2);
    assert!(b.all("a[href$='/restore']").is_empty(), "a viewer is offered Restore");
    assert!(b.all("a[href$='/files']").is_empty(), "a viewer is offered Files");
    let id = b.run("return document.querySelector('tr.point').dataset.id;");
    let id = id.as_str().unwrap();
    let form = format!("{{csrf: {token:?}, target: '/srv/restored.img'}}");
    assert_eq!(post_from_page(&b, &format!("/ui/points/{id}/restore"), &form), 403);
    assert_eq!(cli(&site.server, &["session", "list"]).unwrap().as_array().unwrap().len(), sessions_before);

    // A name that is markup is shown as text, never run as markup.
    let payload = "<img src=x id=pwned onerror=\"document.title='pwned'\">";
    log_in(&b, &base, payload, "x");
    b.wait(10, "the refusal", |b| b.text("p.error").contains("wrong user name or password"));
    assert!(b.all("#pwned").is_empty(), "the payload became markup");
    assert_eq!(b.attribute("input[name=name]", "value").as_deref(), Some(payload));
    assert_ne!(b.run("return document.title;"), Value::String("pwned".into()));

    // Every console answer forbids inline scripts and framing.
    let pem = std::fs::read(site.server.dir.join("ca.pem")).unwrap();
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&[ureq::tls::Certificate::from_pem(&pem).unwrap()]))
        .build();
    let agent = ureq::Agent::config_builder().tls_config(tls).http_status_as_error(false).build().new_agent();
    let r = agent.get(&format!("{base}/ui/login")).call().unwrap();
    let csp = r.headers().get("content-security-policy").unwrap().to_str().unwrap().to_string();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
}

#[test]
fn an_operator_edits_a_job_turns_it_off_retries_it_and_changes_groups_and_tokens() {
    if !browser::available() {
        return;
    }
    let site = Site::new();
    let s = &site.server;
    // A scheduled job whose only computer never joined: every run comes and goes without a
    // point (nothing to back up), so within two minutes it has missed its recovery point.
    cli(s, &["group", "create", "ghosts", "--computer", "pc-9"]).unwrap();
    let ghost = ["job", "create", "ghostly", "--group", "ghosts", "--repository", "main", "--every-minutes", "1"];
    cli(s, &[&ghost[..], &["--source", "/dev/vdb"]].concat()).unwrap();
    let created = std::time::Instant::now();

    let disk = site.dir.path().join("disk.img");
    bulwark_imagegen::generate(&disk, 8 << 20, 5).unwrap();
    // pc-1's pre-job command fails while the flag exists. Streams and priority are not in the
    // wizard: editing must keep them.
    let flag = site.dir.path().join("fail");
    std::fs::write(&flag, "").unwrap();
    let pre = format!("test ! -e {}", flag.display());
    let job = ["job", "create", "nightly", "--computer", "pc-1", "--repository", "main", "--snapshot", "none"];
    let more = ["--keep-last", "4", "--tries", "1", "--streams", "3", "--priority", "7", "--pre-command", &pre];
    cli(s, &[&job[..], &more[..], &["--source", disk.to_str().unwrap()]].concat()).unwrap();

    let base = format!("https://{}", s.address);
    let b = Browser::start(1280, 800);
    log_in(&b, &base, "admin", &admin_password(&site));
    b.wait(10, "the dashboard", |b| b.text("h1") == "Dashboard");

    // The wizard opens on the job as it is.
    b.go(&format!("{base}/ui/jobs"));
    b.click("a[href='/ui/jobs/nightly/edit']");
    b.wait(10, "the job's wizard", |b| b.text("h1") == "Job nightly");
    assert_eq!(b.attribute("input[name=keep_last]", "value").as_deref(), Some("4"));
    assert_eq!(b.attribute("input[name=pre_command]", "value").as_deref(), Some(pre.as_str()));
    assert_eq!(
        b.run("return document.querySelector('textarea[name=sources]').value;"),
        Value::String(disk.display().to_string())
    );
    assert_eq!(b.run("return document.querySelector('select[name=snapshot]').value;"), Value::String("none".into()));
    assert_eq!(b.run("return document.querySelector('input[name=computer][value=pc-1]').checked;"), Value::Bool(true));
    // A day of the month past any month is refused in its part, and changes nothing.
    let submit = |b: &Browser| b.click("form[action='/ui/jobs/nightly/edit'] button[type=submit]");
    b.click("input[name=schedule][value=monthly]");
    b.type_into("input[name=day]", "32");
    b.type_into("input[name=at]", "01:30");
    b.type_into("input[name=keep_last]", "9");
    submit(&b);
    b.wait(10, "the schedule's refusal", |b| !b.text("fieldset:nth-of-type(5) p.error").is_empty());
    let shown = cli(s, &["job", "show", "nightly"]).unwrap();
    assert!(shown["schedule"].is_null() && shown["retention"]["keep_last"] == 4, "{shown:#}");
    b.type_into("input[name=day]", "15");
    b.click("select[name=compression] option[value=high]");
    b.type_into("input[name=lvm_snapshot_size]", "512M");
    submit(&b);
    b.wait(10, "the jobs page", |b| b.text("h1") == "Jobs");
    let saved = cli(s, &["job", "show", "nightly"]).unwrap();
    assert_eq!(saved["schedule"], serde_json::json!({"kind": "monthly", "day": 15, "at": "01:30"}), "{saved:#}");
    assert_eq!(saved["retention"]["keep_last"], 9, "{saved:#}");
    assert_eq!(saved["compression"], "high", "{saved:#}");
    assert_eq!(saved["lvm_snapshot_size"], "512M", "{saved:#}");
    assert_eq!((saved["streams"].as_u64(), saved["priority"].as_i64()), (Some(3), Some(7)), "kept: {saved:#}");
    assert_eq!(saved["pre_command"], pre.as_str(), "{saved:#}");
    assert_eq!(saved["sources"][0], disk.to_str().unwrap(), "{saved:#}");

    // Started, it fails; Retry appears and reruns the computer, which now succeeds.
    b.click("form[action='/ui/jobs/nightly/start'] button");
    b.wait(10, "the session page", |b| b.url().contains("/ui/sessions/"));
    b.wait(60, "the failure", |b| b.all("div.session[data-status=failed]").len() == 1);
    std::fs::remove_file(&flag).unwrap();
    b.go(&format!("{base}/ui/jobs"));
    b.click("form[action='/ui/jobs/nightly/retry'] button");
    b.wait(10, "the retry's session page", |b| b.url().contains("/ui/sessions/"));
    b.wait(60, "the retry to succeed", |b| b.all("div.session[data-status=success]").len() == 1);
    assert_eq!(b.all("tr.task").len(), 1);
    b.go(&format!("{base}/ui/jobs"));
    b.wait(10, "the jobs", |b| b.text("h1") == "Jobs");
    assert!(b.all("form[action='/ui/jobs/nightly/retry']").is_empty(), "Retry offered after a success");

    // Disabled: marked, no Start, and the API refuses a start; enabled again, Start is back.
    b.click("form[action='/ui/jobs/nightly/disable'] button");
    b.wait(10, "the job disabled", |b| b.all("form[action='/ui/jobs/nightly/enable']").len() == 1);
    assert!(b.all("form[action='/ui/jobs/nightly/start']").is_empty(), "Start offered for a disabled job");
    assert_eq!(cli(s, &["job", "show", "nightly"]).unwrap()["enabled"], false);
    assert!(cli(s, &["job", "start", "nightly"]).unwrap_err().contains("disabled"));
    b.click("form[action='/ui/jobs/nightly/enable'] button");
    b.wait(10, "the job enabled", |b| b.all("form[action='/ui/jobs/nightly/start']").len() == 1);

    // A group's computers changed (one that has not joined yet is shown, and kept unless
    // unchecked); a group left empty is refused; a group a job names cannot be deleted.
    cli(s, &["group", "create", "web", "--computer", "pc-1", "--computer", "pc-7"]).unwrap();
    b.go(&format!("{base}/ui/computers"));
    b.click("tr.group[data-name=web] a");
    b.wait(10, "the group's page", |b| b.text("h1") == "Group web");
    assert_eq!(b.run("return document.querySelector('input[name=computer][value=pc-7]').checked;"), Value::Bool(true));
    b.click("input[name=computer][value='pc-1']");
    b.click("form[action='/ui/groups/web'] button[type=submit]");
    b.wait(10, "the computers", |b| b.text("h1") == "Computers");
    assert_eq!(cli(s, &["group", "show", "web"]).unwrap()["computers"], serde_json::json!(["pc-7"]));
    b.go(&format!("{base}/ui/groups/web"));
    b.click("input[name=computer][value='pc-7']");
    b.click("form[action='/ui/groups/web'] button[type=submit]");
    b.wait(10, "the refusal", |b| b.text("p.error").contains("at least one computer"));
    assert_eq!(cli(s, &["group", "show", "web"]).unwrap()["computers"], serde_json::json!(["pc-7"]));
    b.click("form[action='/ui/groups/web/delete'] button");
    b.wait(10, "the computers", |b| b.text("h1") == "Computers" && b.all("tr.group[data-name=web]").is_empty());
    assert!(cli(s, &["group", "show", "web"]).is_err(), "the group was not deleted");
    b.go(&format!("{base}/ui/groups/ghosts"));
    b.click("form[action='/ui/groups/ghosts/delete'] button");
    b.wait(10, "the refusal", |b| b.text("p.error").contains("ghostly"));
    assert!(cli(s, &["group", "show", "ghosts"]).is_ok(), "a group a job names was deleted");

    // An API token made from the console works once shown, and stops working once revoked.
    b.go(&format!("{base}/ui/access"));
    b.type_into("form[action='/ui/api-tokens'] input[name=name]", "monitoring");
    b.click("form[action='/ui/api-tokens'] button[type=submit]");
    b.wait(10, "the new token", |b| !b.text("#new-token").is_empty());
    let token = b.text("#new-token");
    let whoami = cluster::server::cli_as(s, &token, &["job", "list"]).unwrap();
    assert_eq!(whoami.as_array().unwrap().len(), 2);
    b.go(&format!("{base}/ui/access"));
    let id = b.run(
        "return [...document.querySelectorAll('tr.token')].find(r => r.textContent.includes('monitoring')).dataset.id;",
    );
    let id = id.as_str().unwrap().to_string();
    b.click(&format!("tr.token[data-id='{id}'] button"));
    b.wait(10, "the token gone", |b| b.all(&format!("tr.token[data-id='{id}']")).is_empty());
    assert!(cluster::server::cli_as(s, &token, &["job", "list"]).is_err(), "a revoked token still works");

    // A repository's settings: a time that is not one is refused in words and changes
    // nothing; then saved; a health check started from the page says what it found.
    b.go(&format!("{base}/ui/repositories"));
    b.click("tr.repository[data-name=main] a[href='/ui/repositories/main']");
    b.wait(10, "the repository's settings", |b| b.text("h1") == "Repository main");
    b.type_into("input[name=max_tasks]", "2");
    b.click("input[name=verify][value=daily]");
    b.type_into("input[name=at]", "26:00");
    b.click("form[action='/ui/repositories/main'] button[type=submit]");
    b.wait(10, "the refusal", |b| b.text("p.error").contains("26:00"));
    let shown = cli(s, &["repository", "show", "main"]).unwrap();
    assert!(shown["verify_schedule"].is_null() && shown["max_tasks"] != 2, "{shown:#}");
    b.type_into("input[name=at]", "03:00");
    b.click("form[action='/ui/repositories/main'] button[type=submit]");
    b.wait(10, "the repositories", |b| b.text("h1") == "Repositories");
    let shown = cli(s, &["repository", "show", "main"]).unwrap();
    assert_eq!(
        shown["verify_schedule"],
        serde_json::json!({"kind": "daily", "at": "03:00", "weekdays": []}),
        "{shown:#}"
    );
    assert_eq!(shown["max_tasks"], 2, "{shown:#}");
    b.go(&format!("{base}/ui/repositories/main"));
    b.click("form[action='/ui/repositories/main/verify'] button");
    b.wait(60, "the health check", |b| b.text("article.checked").contains("Sound"));
    assert_eq!(b.run("return document.querySelector('input[name=verify][value=daily]').checked;"), Value::Bool(true));

    // The dashboard names the computer whose job's schedule went by without a point, and the
    // API lists it first.
    let left = Duration::from_secs(150).saturating_sub(created.elapsed());
    b.go(&format!("{base}/ui/"));
    b.wait(left.as_secs() + 10, "the missed recovery point", |b| {
        std::thread::sleep(Duration::from_secs(1));
        b.go(&format!("{base}/ui/"));
        b.all("li.missed[data-computer='pc-9']").len() == 1
    });
    let rpo = cli(s, &["job", "rpo"]).unwrap();
    assert_eq!(
        (rpo[0]["job"].as_str(), rpo[0]["computer"].as_str(), rpo[0]["missed"].as_bool()),
        (Some("ghostly"), Some("pc-9"), Some(true)),
        "{rpo:#}"
    );
    let nightly = rpo.as_array().unwrap().iter().find(|r| r["job"] == "nightly").expect("nightly listed");
    assert_eq!(nightly["missed"], false, "a monthly job backed up just now: {rpo:#}");
    // The repository's size, room and reduction, once measured in the background.
    b.wait(30, "the repository measured", |b| {
        std::thread::sleep(Duration::from_secs(1));
        b.go(&format!("{base}/ui/"));
        b.text("tr.repository[data-name=main] td.reduction").ends_with('×')
    });
    assert!(b.text("tr.repository[data-name=main] td.free").contains(" of "), "{}", b.text("tr.repository"));
    shoot(&b, "dashboard-rpo");
}
