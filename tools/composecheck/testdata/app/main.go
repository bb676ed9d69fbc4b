// Command app is a stand-in service for composecheck's tests.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Println(os.Getenv("VIGIL_APP_URL"), os.Getenv("VIGIL_APP_LEVEL"))
}
