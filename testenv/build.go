package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// RunWithSluice builds the sluice binary into a temporary directory, sets
// *bin to it, runs the tests and exits. SLUICE_TEST_RACE=1 builds it with
// the race detector, so daemons under test run with it too.
func RunWithSluice(m *testing.M, bin *string) {
	dir, err := os.MkdirTemp("", "sluice-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "build sluice:", err)
		os.Exit(1)
	}
	*bin = filepath.Join(dir, "sluice")
	args := []string{"build", "-o", *bin}
	if os.Getenv("SLUICE_TEST_RACE") != "" {
		args = append(args, "-race")
	}
	if out, err := exec.Command("go", append(args, "github.com/sluicelb/sluice/cmd/sluice")...).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build sluice: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
