// Command app is a stand-in service for composecheck's tests: it reads
// VIGIL_APP_URL directly and VIGIL_APP_MODE through a flag whose usage names
// the variable.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
)

func main() {
	name := "app-mode"
	envName := "VIGIL_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
	mode := flag.String(name, os.Getenv(envName), "run mode (env "+envName+")")
	flag.Parse()
	fmt.Println(os.Getenv("VIGIL_APP_URL"), *mode)
}
