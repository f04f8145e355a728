package layout

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The architecture page names files, packages and functions in
// backticks; each must exist. A function is written `name()`,
// `Type.Method()` or `pkg.Func()`; a bare capitalised name is a Go type,
// function, method, variable or constant.
var (
	backticked = regexp.MustCompile("`([^`\n]+)`")
	fileName   = regexp.MustCompile(`^[\w./-]+\.(go|c|h|sh|md|yml|yaml)$`)
	pkgPath    = regexp.MustCompile(`^(bpf|cmd|control|loader|health|testenv)(/[a-z0-9_]+)*$`)
	funcName   = regexp.MustCompile(`^([A-Za-z_]\w*\.)?[A-Za-z_]\w*\(\)$`)
	goName     = regexp.MustCompile(`^[A-Z][A-Za-z0-9]*$`)
	cDef       = regexp.MustCompile(`(?m)^[A-Za-z_][^(\n;]*\b(\w+)\(`)
)

// tree indexes what the source tree declares.
type tree struct {
	root  string
	files map[string]bool            // paths relative to root
	base  map[string]bool            // base names
	dirs  map[string]bool            // directories holding Go files
	names map[string]bool            // Go declarations: Name, Recv.Name
	pkgs  map[string]map[string]bool // package name -> its top-level funcs
	cfns  map[string]bool            // C functions defined in bpf/
}

func indexTree(t *testing.T, root string) *tree {
	t.Helper()
	tr := &tree{root: root, files: map[string]bool{}, base: map[string]bool{}, dirs: map[string]bool{},
		names: map[string]bool{}, pkgs: map[string]map[string]bool{}, cfns: map[string]bool{}}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") && p != root || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		tr.files[rel], tr.base[d.Name()] = true, true
		switch filepath.Ext(p) {
		case ".go":
			tr.dirs[filepath.Dir(rel)] = true
			return tr.goFile(p)
		case ".c", ".h":
			src, err := os.ReadFile(p)
			for _, m := range cDef.FindAllSubmatch(src, -1) {
				tr.cfns[string(m[1])] = true
			}
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// goFile notes a Go file's declarations.
func (tr *tree) goFile(path string) error {
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
	if err != nil {
		return err
	}
	pkg := tr.pkgs[f.Name.Name]
	if pkg == nil {
		pkg = map[string]bool{}
		tr.pkgs[f.Name.Name] = pkg
	}
	for _, d := range f.Decls {
		switch d := d.(type) {
		case *ast.FuncDecl:
			tr.names[d.Name.Name] = true
			if d.Recv == nil {
				pkg[d.Name.Name] = true
				continue
			}
			recv := d.Recv.List[0].Type
			if s, ok := recv.(*ast.StarExpr); ok {
				recv = s.X
			}
			if id, ok := recv.(*ast.Ident); ok {
				tr.names[id.Name+"."+d.Name.Name] = true
			}
		case *ast.GenDecl:
			tr.genDecl(d)
		}
	}
	return nil
}

func (tr *tree) genDecl(d *ast.GenDecl) {
	for _, s := range d.Specs {
		switch s := s.(type) {
		case *ast.TypeSpec:
			tr.names[s.Name.Name] = true
			if it, ok := s.Type.(*ast.InterfaceType); ok {
				for _, m := range it.Methods.List {
					for _, n := range m.Names {
						tr.names[n.Name] = true
						tr.names[s.Name.Name+"."+n.Name] = true
					}
				}
			}
		case *ast.ValueSpec:
			for _, n := range s.Names {
				tr.names[n.Name] = true
			}
		}
	}
}

// missing says what the page names that the tree lacks.
func (tr *tree) missing(doc string) []string {
	var out []string
	inFence := false
	for _, line := range strings.Split(doc, "\n") {
		if strings.HasPrefix(line, "```") {
			inFence = !inFence
			continue
		}
		if inFence {
			continue
		}
		for _, m := range backticked.FindAllStringSubmatch(line, -1) {
			if why := tr.check(m[1]); why != "" {
				out = append(out, "`"+m[1]+"`: "+why)
			}
		}
	}
	return out
}

// check says why name is not in the tree ("" if it is, or is not a name
// the page is held to).
func (tr *tree) check(name string) string {
	switch {
	case fileName.MatchString(name):
		if strings.Contains(name, "/") && !tr.files[name] || !tr.base[filepath.Base(name)] {
			return "no such file"
		}
	case pkgPath.MatchString(name):
		if !tr.dirs[name] && !tr.files[name] {
			if st, err := os.Stat(filepath.Join(tr.root, name)); err != nil || !st.IsDir() {
				return "no such package"
			}
		}
	case funcName.MatchString(name):
		fn := strings.TrimSuffix(name, "()")
		if q, n, ok := strings.Cut(fn, "."); ok {
			if !tr.names[fn] && !tr.pkgs[q][n] {
				return "no such method or function"
			}
		} else if !tr.names[fn] && !tr.cfns[fn] {
			return "no such function"
		}
	case goName.MatchString(name):
		if !tr.names[name] {
			return "no such declaration"
		}
	}
	return ""
}

func archDoc(t *testing.T) string {
	t.Helper()
	path := os.Getenv("SLUICE_ARCH_DOC") // another copy of the page, to try the test on
	if path == "" {
		path = "../../docs/architecture.md"
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestArchitectureDocIsTrue: every file, package and function
// docs/architecture.md names exists, and every package is on it.
func TestArchitectureDocIsTrue(t *testing.T) {
	doc := archDoc(t)
	tr := indexTree(t, "../..")
	for _, m := range tr.missing(doc) {
		t.Errorf("docs/architecture.md names %s", m)
	}
	for _, p := range list(t, "./...") {
		name, _ := rel(p.ImportPath)
		if !strings.Contains(doc, "`"+name+"`") {
			t.Errorf("docs/architecture.md does not name package %s", name)
		}
	}
}

// TestArchitectureCheckCatches: the check refuses what does not exist, of
// each kind, and takes what does.
func TestArchitectureCheckCatches(t *testing.T) {
	tr := indexTree(t, "../..")
	for name, bad := range map[string]bool{
		"`control/core.go`": false, "`core.go`": false, "`control/nosuch.go`": true, "`nosuch.go`": true,
		"`lb.c`": false, "`bpf/encap_v4.c`": true,
		"`control/view`": false, "`control/nosuch`": true,
		"`find_vip()`": false, "`encap_v4()`": true, "`view.Build()`": false, "`view.Nosuch()`": true,
		"`Reconciler.Apply()`": false, "`Reconciler.Nosuch()`": true,
		"`FieldError`": false, "`NoSuchType`": true, "`--iface`": false,
	} {
		if got := len(tr.missing(name)) > 0; got != bad {
			t.Errorf("%s: refused %v, want %v", name, got, bad)
		}
	}
}
