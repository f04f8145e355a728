// Package layout checks the shape of sluice's source tree: which package
// may import which, that the binary links no test code, and that packages
// and functions stay small enough to read. It has no code of its own
// outside its test.
package layout
