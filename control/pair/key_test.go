package pair

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluicelb/sluice/testenv/testutil"
)

// TestReadKeyRefusesUnsafeFiles: a key readable by group or others, not
// root's, not a regular file, or not a key at all is refused, naming the
// file and what is wrong with it.
func TestReadKeyRefusesUnsafeFiles(t *testing.T) {
	testutil.Require(t) // chown needs root
	dir := t.TempDir()
	key := []byte("a shared secret of the lab pair\n")
	cases := []struct {
		name string
		mode os.FileMode
		uid  int
		body []byte
		want string // "" means accepted
	}{
		{"0400", 0o400, 0, key, ""},
		{"0600", 0o600, 0, key, ""},
		{"0644", 0o644, 0, key, "mode 0644"},
		{"0640", 0o640, 0, key, "mode 0640"},
		{"0604", 0o604, 0, key, "mode 0604"},
		{"nobody", 0o400, 65534, key, "owned by uid 65534"},
		{"huge", 0o400, 0, []byte(strings.Repeat("k", 5000)), "more than 4096 bytes"},
		{"short", 0o400, 0, []byte("tiny\n"), "4 bytes, want at least 16"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(dir, c.name)
			if err := os.WriteFile(path, c.body, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, c.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(path, c.uid, 0); err != nil {
				t.Fatal(err)
			}
			_, err := ReadKey(path)
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("refused a safe key: %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path)):
				t.Fatalf("error %v, want it to name %s and %q", err, path, c.want)
			}
		})
	}
	if _, err := ReadKey(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("a directory as key: %v", err)
	}
}
