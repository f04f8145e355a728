package layout

import (
	"bytes"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/sluicelb/sluice"

// layer ranks every package: a package may import only packages of a
// lower rank, so dependencies point one way, down, and the subpackages
// of control sit below control itself. A package missing here fails the
// test: a new package must be given its place.
var layer = map[string]int{
	"bpf":                      0,
	"bpf/nocapture":            0,
	"control/maglev":           1,
	"control/neigh":            1,
	"control/hook":             1,
	"control/sdnotify":         1,
	"control/netif":            1,
	"control/peer":             1,
	"loader/internal/pin":      1,
	"loader/internal/layout":   1,
	"loader":                   2,
	"loader/decap":             2,
	"loader/capture":           2,
	"control/ha":               2,
	"control/state":            2,
	"loader/tcprobe":           3,
	"health":                   3,
	"control/probevia":         4,
	"cmd/sluice/netlab":        3,
	"control/api":              3,
	"control/etcdstore":        3,
	"control/flowsync":         3,
	"control/weight":           4,
	"control/events":           4,
	"control/bgp":              4,
	"control/availability":     4,
	"control/apiserver":        4,
	"control/metrics":          5,
	"control/view":             5,
	"control/reconcile":        6,
	"control/cluster":          6,
	"control/pair":             6,
	"control/failover":         6,
	"control":                  7,
	"cmd/sluice/internal/lab":  8,
	"cmd/sluice/internal/demo": 9,
	"cmd/sluice":               10,
	// Imported by tests only.
	"testenv":          11,
	"testenv/testutil": 11,
	"testenv/memdp":    11,
	"testenv/e2e":      12,
	"testenv/layout":   12,
}

// Limits of a package (non-test, non-generated lines) and of a function.
const (
	maxPackageLines  = 2500
	maxFunctionLines = 80
)

type pkg struct {
	ImportPath   string
	Dir          string
	Doc          string
	GoFiles      []string
	TestGoFiles  []string
	XTestGoFiles []string
	Imports      []string
	Deps         []string
}

func list(t *testing.T, args ...string) []pkg {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list", "-json"}, args...)...)
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %v: %v", args, err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

func rel(path string) (string, bool) {
	if path == module {
		return "", true
	}
	return strings.CutPrefix(path, module+"/")
}

// TestBinaryLinksNoTestCode: the shipped binary does not link testing or
// any test-only package (testenv and below it; the lab it runs is
// cmd/sluice/netlab).
func TestBinaryLinksNoTestCode(t *testing.T) {
	for _, d := range list(t, "./cmd/sluice")[0].Deps {
		if d == "testing" || d == module+"/testenv" || strings.HasPrefix(d, module+"/testenv/") {
			t.Errorf("cmd/sluice links %s", d)
		}
	}
}

// TestImportsPointDown: every import goes to a lower layer; control/maglev
// imports only the standard library; control/pair does not import control.
func TestImportsPointDown(t *testing.T) {
	for _, p := range list(t, "./...") {
		name, _ := rel(p.ImportPath)
		rank, ok := layer[name]
		if !ok {
			t.Errorf("%s: not in the layer table of this test; give it its place", name)
			continue
		}
		for _, imp := range p.Imports {
			dep, ours := rel(imp)
			if !ours {
				if name == "control/maglev" && strings.Contains(strings.Split(imp, "/")[0], ".") {
					t.Errorf("control/maglev imports %s: it may import only the standard library", imp)
				}
				continue
			}
			if layer[dep] >= rank {
				t.Errorf("%s (layer %d) imports %s (layer %d): imports must point down", name, rank, dep, layer[dep])
			}
		}
	}
}

// TestModelOwnsItsTypes: the desired state depends on neither the data
// plane nor the checker; they map from its types (health.For, and the
// reconciler's DataKey), so the model's rules live in one place.
func TestModelOwnsItsTypes(t *testing.T) {
	p := list(t, "./control/state")[0]
	for _, imp := range p.Imports {
		if dep, _ := rel(imp); dep == "loader" || dep == "health" || strings.HasPrefix(dep, "loader/") || strings.HasPrefix(dep, "health/") {
			t.Errorf("control/state imports %s", dep)
		}
	}
}

// TestPackagesAreSmall: each package has a doc comment, holds at most
// maxPackageLines lines outside tests and generated code, and no function
// there is longer than maxFunctionLines.
func TestPackagesAreSmall(t *testing.T) {
	for _, p := range list(t, "./...") {
		name, _ := rel(p.ImportPath)
		if p.Doc == "" {
			t.Errorf("%s: no package doc comment", name)
		}
		lines := 0
		for _, f := range p.GoFiles {
			n, long, err := measure(filepath.Join(p.Dir, f))
			if err != nil {
				t.Fatal(err)
			}
			if n < 0 {
				continue // generated
			}
			lines += n
			for _, l := range long {
				t.Errorf("%s/%s: %s", name, f, l)
			}
		}
		t.Logf("%-22s %5d lines", name, lines)
		if lines > maxPackageLines {
			t.Errorf("%s: %d lines outside tests, at most %d", name, lines, maxPackageLines)
		}
	}
}

// measure counts a file's lines and lists its functions longer than
// maxFunctionLines; a generated file counts -1.
func measure(path string) (int, []string, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return 0, nil, err
	}
	fs := token.NewFileSet()
	f, err := parser.ParseFile(fs, path, src, parser.ParseComments)
	if err != nil {
		return 0, nil, err
	}
	if ast.IsGenerated(f) {
		return -1, nil, nil
	}
	var long []string
	for _, d := range f.Decls {
		if fd, ok := d.(*ast.FuncDecl); ok {
			n := fs.Position(fd.End()).Line - fs.Position(fd.Pos()).Line + 1
			if n > maxFunctionLines {
				long = append(long, fmt.Sprintf("func %s: %d lines, at most %d", fd.Name.Name, n, maxFunctionLines))
			}
		}
	}
	return bytes.Count(src, []byte("\n")), long, nil
}

// TestEveryFuzzTargetRuns: `make fuzz`, which CI runs, lists every fuzz
// target in the tree with its package.
func TestEveryFuzzTargetRuns(t *testing.T) {
	mk, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	var listed string
	for _, line := range strings.Split(string(mk), "\n") {
		if v, ok := strings.CutPrefix(line, "FUZZ_TARGETS = "); ok {
			listed = " " + v + " "
		}
	}
	for _, p := range list(t, "./...") {
		name, _ := rel(p.ImportPath)
		for _, f := range append(testFiles(p), p.GoFiles...) {
			src, err := os.ReadFile(filepath.Join(p.Dir, f))
			if err != nil {
				t.Fatal(err)
			}
			for _, line := range strings.Split(string(src), "\n") {
				fn, ok := strings.CutPrefix(line, "func Fuzz")
				if !ok {
					continue
				}
				target := "Fuzz" + fn[:strings.Index(fn, "(")]
				if !strings.Contains(listed, " "+target+":./"+name+"/ ") {
					t.Errorf("%s in %s is not in the Makefile's FUZZ_TARGETS", target, name)
				}
			}
		}
	}
}

func testFiles(p pkg) []string {
	return append(append([]string{}, p.TestGoFiles...), p.XTestGoFiles...)
}
