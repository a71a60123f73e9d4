//! A small CRI client for the demo (no crictl on these machines):
//!   kw-cri images SOCKET WORKDIR                 build the test images and import them for CRI
//!   kw-cri run SOCKET HANDLER IMAGE [ARG...] [--env K=V]...
//!                                                a pod on HANDLER, one container; prints its output
//!                                                and exits with the container's exit code

use std::path::Path;
use std::time::Duration;

use kwasm_tests::cri::{Container, Cri};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("images") if args.len() == 3 => images(Path::new(&args[1]), Path::new(&args[2])),
        Some("run") if args.len() >= 4 => run(&args[1..]),
        _ => {
            eprintln!("usage: kw-cri images SOCKET WORKDIR | kw-cri run SOCKET HANDLER IMAGE [ARG...] [--env K=V]...");
            std::process::exit(2);
        }
    }
}

fn images(socket: &Path, work: &Path) {
    std::fs::create_dir_all(work).unwrap();
    let import = |archive: &Path| {
        let st = std::process::Command::new("ctr")
            .arg("--address")
            .arg(socket)
            .args(["-n", "k8s.io", "images", "import"])
            .arg(archive)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
    };
    for (name, archive) in kwasm_tests::workloads::build_all(work) {
        import(&archive);
        println!("{name}");
    }
}

fn run(args: &[String]) {
    let (socket, handler, image) = (Path::new(&args[0]), &args[1], &args[2]);
    let mut rest = args[3..].iter();
    let (mut argv, mut env) = (Vec::new(), Vec::new());
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--env" => {
                let kv = rest.next().expect("--env K=V");
                env.push(
                    kv.split_once('=')
                        .map(|(k, v)| (k, v.to_owned()))
                        .expect("--env K=V"),
                );
            }
            other => argv.push(other),
        }
    }
    let mut cri = Cri::connect(socket);
    let logs = tempfile::tempdir().unwrap();
    let pod = cri
        .run_pod(
            &format!("demo-{}", std::process::id()),
            handler,
            logs.path(),
        )
        .unwrap_or_else(|e| {
            eprintln!("{e:#}");
            std::process::exit(1)
        });
    let mut c = Container::new("main", image);
    c.args = argv;
    c.env = env;
    let id = cri.start(&pod, &c).unwrap();
    let exited = cri.wait_exited(&pod, "main", &id, Duration::from_secs(60));
    print!("{}", exited.log);
    cri.remove_pod(&pod).unwrap();
    std::process::exit(exited.exit_code);
}
