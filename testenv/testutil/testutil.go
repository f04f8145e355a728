// Package testutil holds what sluice's tests share and the binary must not
// link: the privilege gate, building the binary under test, percentiles.
// Only _test.go files import it.
package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
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

// Require skips a test that needs root, except under CI=true, where it
// fails: privileged tests must run there.
func Require(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test needs root (BPF, network namespaces) and CI=true")
	}
	t.Skip("needs root")
}

// Percentile is the nearest-rank p-quantile (0 < p <= 1) of ds, which it
// does not reorder.
func Percentile(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	idx := int(p*float64(len(s))+0.999999) - 1 // ceil, forgiving float error
	return s[max(0, min(len(s)-1, idx))]
}

// WaitCount polls count until it reaches target, failing t with stalled's
// message after timeout. It is for counters that a load generator moves
// many times a second.
func WaitCount(t testing.TB, count func() int64, target int64, timeout time.Duration, stalled func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for count() < target {
		if time.Now().After(deadline) {
			t.Fatal(stalled())
		}
		time.Sleep(time.Millisecond)
	}
}

// ReplaceSection rewrites the text between <!-- NAME:begin --> and
// <!-- NAME:end --> in a file (a benchmark's table in the docs), through a
// temporary file and a rename, so a failed write leaves the file whole.
func ReplaceSection(path, name, body string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(raw)
	begin, end := "<!-- "+name+":begin -->", "<!-- "+name+":end -->"
	i, j := strings.Index(s, begin), strings.Index(s, end)
	if i < 0 || j < i {
		return fmt.Errorf("%s: no %s ... %s markers", path, begin, end)
	}
	s = s[:i+len(begin)] + "\n" + body + "\n" + s[j:]
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(s), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("replace %s: %w", path, err)
	}
	return nil
}

// InNewNetns runs fn on a thread of its own in a new, empty network
// namespace, and goes back to the original one after.
func InNewNetns(t testing.TB, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { netns.Set(orig); ns.Close() }()
	fn()
}
