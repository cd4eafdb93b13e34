//! Files out of any point through the server: a point's directories a page at a time, one
//! file's bytes (whole, or from an offset), read on the transport node that holds the point,
//! against a real server, transport node and agent; and who may read them.

mod cluster;

use std::path::Path;

use cluster::server::{admin_token, cli, Http, Site};
use serde_json::Value;

impl Site {
    fn client(&self, token: &str) -> bulwark_client::Client {
        let ca = self.server.dir.join("ca.pem");
        bulwark_client::Client::connect(&format!("https://{}", self.server.address), token, Some(&ca)).unwrap()
    }

    /// Backs up `source` with a new job `name` of `mode`; the point's id.
    fn back_up(&self, name: &str, mode: &str, source: &Path) -> String {
        let job = ["job", "create", name, "--mode", mode, "--computer", "pc-1", "--repository", "main"];
        cli(&self.server, &[&job[..], &["--source", source.to_str().unwrap(), "--snapshot", "none"]].concat()).unwrap();
        let done = cli(&self.server, &["job", "start", name, "--wait"]).unwrap();
        assert_eq!(done["status"], "success", "{done:#}");
        let points = cli(&self.server, &["point", "list"]).unwrap();
        let p = points.as_array().unwrap().iter().rev().find(|p| p["name"].as_str().unwrap().starts_with("pc-1"));
        p.unwrap()["id"].as_str().unwrap().to_string()
    }
}

fn names(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_string()).collect()
}

#[test]
fn a_file_level_point_is_browsed_a_directory_at_a_time_and_its_files_downloaded() {
    let site = Site::new();
    let s = &site.server;
    let src = site.dir.path().join("files");
    std::fs::create_dir_all(src.join("etc/ssh")).unwrap();
    std::fs::create_dir_all(src.join("var/log")).unwrap();
    for i in 0..25 {
        std::fs::write(src.join(format!("etc/f{i:02}")), format!("file {i}\n")).unwrap();
    }
    std::fs::write(src.join("etc/ssh/sshd_config"), "PermitRootLogin no\n").unwrap();
    // Spans several chunks, with a hole in the middle.
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let f = std::fs::File::create(src.join("var/log/big.log")).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&big[..2_000_000], 0).unwrap();
    f.write_all_at(&big[3_000_000..], 3_000_000).unwrap();
    let mut want = big.clone();
    want[2_000_000..3_000_000].fill(0);
    std::os::unix::fs::symlink("ssh/sshd_config", src.join("etc/link")).unwrap();
    // A name that is not UTF-8 sorts after every other: the pages' cursor must name it exactly.
    use std::os::unix::ffi::OsStrExt;
    std::fs::write(src.join("etc").join(std::ffi::OsStr::from_bytes(b"\xff\xfeodd")), "odd\n").unwrap();
    let point = site.back_up("files", "files", &src);

    // One directory, not its subtree; sorted; symlinks with their target.
    let root = cli(s, &["point", "files", &point]).unwrap();
    assert_eq!(names(&root), ["etc", "var"], "{root:#}");
    let etc = cli(s, &["point", "files", &point, "/etc"]).unwrap();
    let etc_names = names(&etc);
    assert_eq!(etc_names.len(), 28, "25 files, ssh, link and the odd name: {etc_names:?}");
    assert!(etc_names.windows(2).all(|w| w[0] < w[1]), "sorted: {etc_names:?}");
    let link = etc.as_array().unwrap().iter().find(|e| e["name"] == "link").unwrap();
    assert_eq!((link["kind"].as_str(), link["target"].as_str()), (Some("symlink"), Some("ssh/sshd_config")));
    assert!(!etc_names.contains(&"sshd_config".to_string()), "not a walk of the subtree");

    // Pages: every entry once, in order.
    let admin = site.client(&admin_token(s));
    let (mut cursor, mut paged) = (None::<String>, Vec::new());
    loop {
        let page = admin.files(&point, 0, "/etc", cursor.as_deref(), 9).unwrap();
        assert!(page.entries.len() <= 9);
        paged.extend(page.entries.into_iter().map(|e| e.name));
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(paged, etc_names);

    // A download is byte for byte, holes included; from an offset, the rest.
    let out = site.dir.path().join("big.out");
    cli(s, &["point", "download", &point, "/var/log/big.log", "--to", out.to_str().unwrap()]).unwrap();
    assert!(std::fs::read(&out).unwrap() == want, "the downloaded file differs from the source");
    let mut tail = Vec::new();
    assert_eq!(admin.download(&point, 0, "/var/log/big.log", 4_500_000, &mut tail).unwrap(), 500_000);
    assert!(tail == want[4_500_000..], "a ranged download differs");
    let again = cli(s, &["point", "download", &point, "/var/log/big.log", "--to", out.to_str().unwrap()]);
    assert!(again.unwrap_err().contains("--overwrite"), "an existing file is not replaced unasked");

    // A directory as a tar archive, read by tar itself: the same files, modes and link.
    let archive = site.dir.path().join("etc.tar");
    cli(s, &["point", "download", &point, "/etc", "--tar", "--to", archive.to_str().unwrap()]).unwrap();
    let unpacked = site.dir.path().join("unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    let st = std::process::Command::new("tar")
        .args(["-xf", archive.to_str().unwrap(), "-C", unpacked.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    for i in [0, 7, 24] {
        let name = format!("etc/f{i:02}");
        assert_eq!(std::fs::read(unpacked.join(&name)).unwrap(), std::fs::read(src.join(&name)).unwrap(), "{name}");
    }
    assert_eq!(std::fs::read(unpacked.join("etc/ssh/sshd_config")).unwrap(), b"PermitRootLogin no\n");
    assert_eq!(std::fs::read_link(unpacked.join("etc/link")).unwrap(), Path::new("ssh/sshd_config"));
    let e = cli(s, &["point", "download", &point, "/nope", "--tar", "--to", "-"]).unwrap_err();
    assert!(e.contains("has no file \"/nope\""), "{e}");

    // Bad input says what is wrong, and how.
    let e = cli(s, &["point", "files", &point, "/nope"]).unwrap_err();
    assert!(e.contains("has no directory \"/nope\""), "{e}");
    let e = cli(s, &["point", "files", &point, "/etc/../etc"]).unwrap_err();
    assert!(e.contains("'..'"), "{e}");
    let e = cli(s, &["point", "download", &point, "/etc", "--to", "-"]).unwrap_err();
    assert!(e.contains("not a regular file"), "{e}");
    let e = cli(s, &["point", "files", "20990101T000000Z-000000"]).unwrap_err();
    assert!(e.contains("no restore point"), "{e}");
    let e = cli(s, &["point", "volumes", &point]).unwrap_err();
    assert!(e.contains("file-level point"), "{e}");

    // Reading a point's files is reading the computer's data: not for viewers.
    let pw = site.dir.path().join("pw");
    std::fs::write(&pw, "viewer-password-1\n").unwrap();
    cli(s, &["user", "create", "watcher", "--role", "viewer", "--password-file", pw.to_str().unwrap()]).unwrap();
    let http = Http::new(s);
    let (_, login) = http.login("watcher", "viewer-password-1");
    let token = login["token"].as_str().unwrap();
    let (status, body) = http.call("GET", &format!("/points/{point}/files?path=/etc"), Some(token), None);
    assert_eq!(status, 403, "{body}");
    let mut sink = Vec::new();
    let e = site.client(token).download(&point, 0, "/etc/f01", 0, &mut sink).unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    assert!(sink.is_empty());
    let (status, _) = http.call("GET", &format!("/points/{point}"), Some(token), None);
    assert_eq!(status, 200, "viewers still see the catalog");
}

/// An ext4 image made by `mkfs.ext4 -d` from `src`.
fn ext4_image(src: &Path, img: &Path) {
    let st =
        std::process::Command::new("mkfs.ext4").args(["-q", "-F", "-d"]).arg(src).arg(img).arg("32M").status().unwrap();
    assert!(st.success(), "mkfs.ext4");
}

#[test]
fn a_volume_points_files_are_browsed_downloaded_and_restored_onto_a_computer() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let site = Site::new();
    let s = &site.server;
    let src = site.dir.path().join("fs");
    std::fs::create_dir_all(src.join("srv/www")).unwrap();
    std::fs::create_dir_all(src.join("home/ann")).unwrap();
    let page: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(src.join("srv/www/index.html"), &page).unwrap();
    std::fs::write(src.join("home/ann/notes.txt"), "ann's notes\n").unwrap();
    std::fs::set_permissions(src.join("home/ann/notes.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("../srv/www", src.join("home/www")).unwrap();
    let image = site.dir.path().join("fs.img");
    ext4_image(&src, &image);
    let point = site.back_up("vol", "volumes", &image);

    let volumes = cli(s, &["point", "volumes", &point]).unwrap();
    assert_eq!(volumes[0]["number"], 0);
    assert_eq!(volumes[0]["content"], "ext4", "{volumes:#}");
    let root = names(&cli(s, &["point", "files", &point]).unwrap());
    assert!(root.contains(&"srv".to_string()) && root.contains(&"home".to_string()), "{root:?}");
    let home = cli(s, &["point", "files", &point, "/home"]).unwrap();
    let www = home.as_array().unwrap().iter().find(|e| e["name"] == "www").unwrap();
    assert_eq!((www["kind"].as_str(), www["target"].as_str()), (Some("symlink"), Some("../srv/www")));
    let e = cli(s, &["point", "files", &point, "/", "--volume", "3"]).unwrap_err();
    assert!(e.contains("no volume 3"), "{e}");

    let out = site.dir.path().join("index.out");
    cli(s, &["point", "download", &point, "/srv/www/index.html", "--to", out.to_str().unwrap()]).unwrap();
    assert!(std::fs::read(&out).unwrap() == page, "the downloaded file differs from the one in the image");

    // Chosen paths restored onto the computer, through its agent, with their metadata.
    let to = site.dir.path().join("restored");
    let done =
        cli(s, &["restore", &point, "--path", "/home", "--path", "/srv/www/index.html", "--to", to.to_str().unwrap()])
            .unwrap();
    assert_eq!(done["status"], "success", "{done:#}");
    assert!(std::fs::read(to.join("srv/www/index.html")).unwrap() == page);
    let notes = to.join("home/ann/notes.txt");
    assert_eq!(std::fs::read(&notes).unwrap(), b"ann's notes\n");
    assert_eq!(std::fs::metadata(&notes).unwrap().mode() & 0o7777, 0o600);
    assert_eq!(std::fs::read_link(to.join("home/www")).unwrap(), Path::new("../srv/www"));
    let e = cli(s, &["restore", &point, "--path", "/nope", "--to", site.dir.path().join("nothing").to_str().unwrap()])
        .unwrap_err();
    assert!(e.contains("/nope"), "{e}");
    assert!(!site.dir.path().join("nothing").join("nope").exists());

    // Instant recovery: the transport node serves the point over NBD; qemu reads the image.
    let export = cli(s, &["point", "publish", &point, "--hours", "1"]).unwrap();
    let url = export["url"].as_str().unwrap().to_string();
    assert!(url.starts_with("nbd://") && url.contains(&point), "{export:#}");
    let compare = |url: &str| {
        std::process::Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw", url, image.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let out = compare(&url);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let listed = cli(s, &["point", "exports"]).unwrap();
    assert_eq!(listed[0]["url"].as_str(), Some(url.as_str()), "{listed:#}");
    // The name is the key: not listed to clients, a wrong one not answered with the right one.
    let host = url.trim_start_matches("nbd://").split('/').next().unwrap().to_string();
    let list = std::process::Command::new("nbdinfo").arg("--list").arg(format!("nbd://{host}")).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&list.stdout), String::from_utf8_lossy(&list.stderr));
    assert!(!text.contains(&point), "the export list gives the name away: {text}");
    let wrong = std::process::Command::new("nbdinfo").arg(format!("nbd://{host}/{point}")).output().unwrap();
    assert!(!wrong.status.success());
    assert!(!String::from_utf8_lossy(&wrong.stderr).contains(url.rsplit('/').next().unwrap()));
    // An export for another address drops this one.
    let other = cli(s, &["point", "publish", &point, "--allowed-ip", "192.0.2.7"]).unwrap();
    assert!(!compare(other["url"].as_str().unwrap()).status.success(), "a client from another address was served");
    for e in [&export, &other] {
        cli(s, &["point", "unpublish", e["id"].as_str().unwrap()]).unwrap();
    }
    assert!(!compare(&url).status.success(), "the export still answers after unpublish");
    assert_eq!(cli(s, &["point", "exports"]).unwrap(), serde_json::json!([]));
    let e = cli(s, &["point", "unpublish", export["id"].as_str().unwrap()]).unwrap_err();
    assert!(e.contains("no export"), "{e}");
}
