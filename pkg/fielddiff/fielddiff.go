// Package fielddiff says how two values of one struct type differ, field
// by field, for test failures that name what is wrong instead of printing
// two whole values.
package fielddiff

import (
	"fmt"
	"reflect"
	"time"
)

// Fields describes how got differs from want: one indented line per
// differing exported field ("\n\tName: got ..., want ..."), "" when none
// does. got and want are structs of one type; times compare with Equal,
// everything else with reflect.DeepEqual. Unexported fields are skipped.
func Fields[T any](got, want T) string {
	g, w := reflect.ValueOf(got), reflect.ValueOf(want)
	d := ""
	for i := range g.NumField() {
		if !g.Type().Field(i).IsExported() {
			continue
		}
		gf, wf := g.Field(i).Interface(), w.Field(i).Interface()
		if gt, ok := gf.(time.Time); ok && gt.Equal(wf.(time.Time)) {
			continue
		}
		if !reflect.DeepEqual(gf, wf) {
			d += fmt.Sprintf("\n\t%s: got %#v, want %#v", g.Type().Field(i).Name, gf, wf)
		}
	}
	return d
}
