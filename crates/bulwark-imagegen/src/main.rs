//! `bulwark-imagegen generate OUT SIZE_MIB [SEED]` and `bulwark-imagegen mutate IMAGE PERCENT [SEED] [ROUND]`.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, default: u64| args.get(i).map(|s| s.parse::<u64>()).unwrap_or(Ok(default));
    let result = match args.first().map(String::as_str) {
        Some("generate") if args.len() >= 3 => match (num(2, 0), num(3, 1)) {
            (Ok(mib), Ok(seed)) => bulwark_imagegen::generate(Path::new(&args[1]), mib << 20, seed).map(|_| ()),
            _ => Err(std::io::Error::other("SIZE_MIB and SEED are numbers")),
        },
        Some("mutate") if args.len() >= 3 => match (args[2].parse::<f64>(), num(3, 1), num(4, 0)) {
            (Ok(p), Ok(seed), Ok(round)) => bulwark_imagegen::mutate(Path::new(&args[1]), p, seed, round)
                .map(|c| println!("{} regions changed", c.len())),
            _ => Err(std::io::Error::other("PERCENT, SEED and ROUND are numbers")),
        },
        _ => {
            eprintln!("usage: bulwark-imagegen generate OUT SIZE_MIB [SEED]\n       bulwark-imagegen mutate IMAGE PERCENT [SEED] [ROUND]");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulwark-imagegen: {e}");
            ExitCode::FAILURE
        }
    }
}
