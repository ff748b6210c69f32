# free_ports N: N different TCP ports on 127.0.0.1 nobody listens on now
# (the kernel's pick, all held open until all are chosen), so two
# benchmarks on one machine do not take each other's ports.
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
held = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    held.append(s)
print(" ".join(str(s.getsockname()[1]) for s in held))
PY
}
