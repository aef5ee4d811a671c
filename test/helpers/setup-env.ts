// Every test process (and the CLIs it spawns) starts from the same environment, whatever the
// machine running the suite sets: no GitHub Actions workflow commands or step summary (tests of
// those set them explicitly), no Hub progress switch, and no periodic progress lines without a
// terminal (tests that assert an empty stderr would otherwise depend on how busy the machine is;
// the progress tests set MARLIN_FP4_PROGRESS_SECONDS themselves).
for (const k of ['GITHUB_ACTIONS', 'GITHUB_STEP_SUMMARY', 'HF_HUB_DISABLE_PROGRESS_BARS', 'HF_TOKEN_PATH', 'HUGGING_FACE_HUB_TOKEN', 'TRANSFORMERS_OFFLINE']) delete process.env[k];
process.env.MARLIN_FP4_PROGRESS_SECONDS = '0';
