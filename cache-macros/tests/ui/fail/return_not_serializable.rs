use cache_layer::cached;

#[derive(Clone)]
pub struct Report {
    pub lines: Vec<String>,
}

#[cached(ttl = 60)]
async fn report(day: u32) -> Result<Report, String> {
    let _ = day;
    Ok(Report { lines: vec![] })
}

fn main() {}
