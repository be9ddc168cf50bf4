// The JSON Schema derive works without a direct `schemars` dependency: through the prelude,
// through `orch_runtime::{JsonSchema, schemars}`, or by path with `#[schemars(crate = …)]`.
mod by_prelude {
    use orch_runtime::prelude::*;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct Order {
        pub id: u64,
    }

    #[workflow]
    pub async fn place(order: Order) -> u64 {
        order.id
    }
}

mod by_import {
    use orch_runtime::{JsonSchema, schemars, step};
    use serde::{Deserialize, Serialize};

    #[derive(Clone, Serialize, Deserialize, JsonSchema)]
    pub struct Parcel {
        pub grams: u32,
    }

    #[step]
    pub async fn weigh(parcel: &Parcel) -> Result<u32, orch_runtime::StepError> {
        Ok(parcel.grams)
    }
}

mod by_path {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, orch_runtime::JsonSchema)]
    #[schemars(crate = "orch_runtime::schemars")]
    pub struct Label {
        pub text: String,
    }

    #[orch_runtime::workflow]
    pub async fn print(label: Label) -> String {
        label.text
    }
}

fn main() {
    let _ = (by_prelude::Place, by_path::Print, by_import::weigh);
}
