fn main() -> anyhow::Result<()> {
    wasmtp::cli::main()
}
