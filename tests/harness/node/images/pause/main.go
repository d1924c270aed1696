// pause is the pod sandbox's process: it holds the pod's namespaces, reaps orphans (it is PID 1 when the
// pod shares its PID namespace) and exits on SIGINT or SIGTERM. No image registry is reachable from the
// test machine, so the node builds its own instead of pulling registry.k8s.io/pause.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range signals {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			if pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil); pid <= 0 || err != nil {
				break
			}
		}
	}
}
